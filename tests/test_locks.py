"""The cache-entry lock makes a second process (here: thread) wait for the first."""

from __future__ import annotations

import threading
import time

from distillkit.runtime.locks import file_lock


def test_second_holder_waits_until_first_releases(tmp_path):
    lock = tmp_path / "entry.lock"
    events = []
    inside = threading.Event()

    def second():
        inside.wait()
        with file_lock(lock):
            events.append("second in")

    worker = threading.Thread(target=second)
    worker.start()
    with file_lock(lock):
        inside.set()
        time.sleep(0.3)  # the other holder must not get in meanwhile
        events.append("first out")
    worker.join(timeout=10)
    assert events == ["first out", "second in"]
