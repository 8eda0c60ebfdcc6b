"""Host memory reuse for CPU training: glibc's allocator keeps freed memory for the next step.

A CPU training step allocates and frees the same large tensors every time; the largest is
usually the dense gradient of the word embeddings (``vocab x width`` floats: 36 MiB for a
30,522 x 312 BERT student), which ``embedding_dense_backward`` allocates and zero-fills at
every step. glibc serves an allocation above its mmap threshold (at most 32 MiB by default,
raised dynamically up to that) with a fresh ``mmap`` and unmaps it again on ``free``, so every
step page-faults those pages back in (9,300 faults, 15-25 ms here for the 36 MiB gradient) and
a step with more temporaries than another (a layer-wise loss's projections and grams) fragments
the heap so that more of its large tensors take that path. PyTorch's CUDA caching allocator does
the equivalent for GPU memory; on the CPU the usual advice is an allocator such as jemalloc or
tcmalloc loaded with ``LD_PRELOAD``. :func:`keep_freed_memory` asks glibc for the same effect
from inside the process (``mallopt``): large allocations come from the heap, and freed memory
stays mapped for reuse instead of being returned to the system. The process's peak memory is
unchanged (the same tensors are alive at the peak); its resident size no longer shrinks after a
peak.

On by default for training on a CPU (``trainer.keep_freed_memory``); a no-op where the C
library is not glibc (macOS, musl) and on GPU runs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging

log = logging.getLogger(__name__)

# mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: allocations up to this size come from the heap (a 49,152 x 576 float32 embedding gradient
#: is 108 MiB; a causal LM's logits chunk can be hundreds of MiB)
MMAP_THRESHOLD = 1 << 30
#: free memory at the top of the heap kept mapped, up to this size
TRIM_THRESHOLD = 1 << 30


@functools.lru_cache(maxsize=1)
def _glibc() -> ctypes.CDLL | None:
    """The process's C library when it is glibc (it has ``gnu_get_libc_version``)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.gnu_get_libc_version()
    except (OSError, AttributeError):
        return None
    return libc


_applied = False


def keep_freed_memory() -> bool:
    """Makes glibc serve large allocations from the heap and keep freed memory mapped (once per
    process; later calls do nothing).

    Returns:
        Whether the setting is in effect (False: the C library is not glibc, or glibc refused
        a value).
    """
    global _applied
    if _applied:
        return True
    libc = _glibc()
    if libc is None:
        log.debug("the C library is not glibc: freed memory is handled by its allocator")
        return False
    ok = (libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
          and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1)
    _applied = ok
    if ok:
        log.info("CPU memory: glibc keeps freed memory for reuse (mmap threshold %d MiB, trim "
                 "threshold %d MiB; trainer.keep_freed_memory=false turns this off)",
                 MMAP_THRESHOLD >> 20, TRIM_THRESHOLD >> 20)
    else:
        log.info("glibc refused the memory-reuse settings (an older glibc caps the mmap "
                 "threshold at 32 MiB): larger tensors are mapped afresh every step")
    return ok
