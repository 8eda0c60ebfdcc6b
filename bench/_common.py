"""Shared parts of the bench scripts (``speed.py``, ``textbrewer_compare.py``,
``general_textbrewer.py``).

* :func:`prepare`: one distillkit config (Hydra overrides) → the objects a run builds
  (``distillkit.run.build``: data, teacher after its teacher stage, student, bound loss, cached
  teacher logits where the run would use them) and a fixed list of training batches drawn from
  the run's own training loader;
* :func:`train_distillkit` / :func:`train_textbrewer`: train a student on those batches with
  distillkit's engine or with TextBrewer's ``GeneralDistiller`` (same teacher, matches,
  optimizer, LR schedule, clipping, precision), timing the optimizer steps after a warm-up
  and recording the peak memory of the whole case;
* :class:`PeakMemory`, :func:`machine`: peak RSS / CUDA memory, and what ran where.

The bench scripts run as ``python bench/<script>.py``, so ``bench/`` is on ``sys.path`` and
they import this module as ``_common``.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import gc
import os
import platform
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch.utils.tensorboard import SummaryWriter
from transformers import set_seed

from distillkit.app.cli import config_dir
from distillkit.app.schemas import register_schemas
from distillkit.data.feature_rows import ROW, FeatureCollator
from distillkit.engine import Distiller, EngineSettings
from distillkit.run import build, engine_settings

# The tiny test models and generated data (seconds on a CPU); the bench scripts' default.
TINY = ["teacher=tiny", "student=tiny", "data=tiny"]
MIB = 1024 * 1024


def compose(overrides: Sequence[str]) -> DictConfig:
    """The run config for ``overrides``, composed exactly as ``python -m distillkit`` does."""
    register_schemas()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return hydra_compose("config", overrides=list(overrides))


# -- memory ---------------------------------------------------------------------------------
def _status_kib(field_name: str) -> int | None:
    """A ``/proc/self/status`` memory field in KiB (None off Linux)."""
    try:
        with open("/proc/self/status") as fh:
            match = re.search(rf"^{field_name}:\s+(\d+) kB", fh.read(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def rss_bytes() -> int | None:
    """The process's resident set size now (None where ``/proc`` is missing)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _release_free_memory() -> None:
    """Hands memory freed by earlier cases back to the OS (glibc), so that it does not hide
    the next case's growth; a no-op elsewhere."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _reset_rss_peak() -> bool:
    """Resets the kernel's peak-RSS mark (``VmHWM``) to the current RSS; False if refused."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return _status_kib("VmHWM") is not None


@dataclass
class Memory:
    """Peak memory of a block of code (bytes; None where not measurable).

    Attributes:
        rss_start: RSS when the block started.
        rss_peak: highest RSS during the block.
        rss_method: ``VmHWM`` (the kernel's exact high-water mark, reset at the start) or
            ``sampled`` (a background thread reading ``/proc/self/statm`` every 5 ms).
        cuda_start: CUDA memory allocated by torch when the block started.
        cuda_peak: ``torch.cuda.max_memory_allocated`` during the block.
    """

    rss_start: int | None = None
    rss_peak: int | None = None
    rss_method: str = "none"
    cuda_start: int | None = None
    cuda_peak: int | None = None

    @property
    def rss_increase_mib(self) -> float | None:
        """Peak RSS minus RSS at the start, MiB."""
        if self.rss_peak is None or self.rss_start is None:
            return None
        return (self.rss_peak - self.rss_start) / MIB

    @property
    def cuda_increase_mib(self) -> float | None:
        """Peak CUDA allocation minus the allocation at the start, MiB."""
        if self.cuda_peak is None or self.cuda_start is None:
            return None
        return (self.cuda_peak - self.cuda_start) / MIB

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready values, MiB."""
        mib = {k: None if v is None else round(v / MIB, 1) for k, v in asdict(self).items()
               if k != "rss_method"}
        return {"rss_start_mib": mib["rss_start"], "rss_peak_mib": mib["rss_peak"],
                "rss_increase_mib": _round(self.rss_increase_mib),
                "rss_method": self.rss_method,
                "cuda_start_mib": mib["cuda_start"], "cuda_peak_mib": mib["cuda_peak"],
                "cuda_increase_mib": _round(self.cuda_increase_mib)}


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


class PeakMemory:
    """Context manager measuring the peak RSS (and CUDA allocation) of its block.

    On Linux the kernel's own high-water mark is reset at the start (``/proc/self/clear_refs``)
    and read at the end; where that is refused, a background thread samples
    ``/proc/self/statm`` every ``interval`` seconds.
    """

    def __init__(self, interval: float = 0.005, exact: bool = True) -> None:
        self.memory = Memory()
        self._interval = interval
        self._exact = exact
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.wait(self._interval):
            now = rss_bytes()
            if now is not None and now > (self.memory.rss_peak or 0):
                self.memory.rss_peak = now

    def __enter__(self) -> Memory:
        gc.collect()
        _release_free_memory()
        mem = self.memory
        mem.rss_start = rss_bytes()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            mem.cuda_start = torch.cuda.memory_allocated()
        if mem.rss_start is None:
            return mem
        if self._exact and _reset_rss_peak():
            mem.rss_method = "VmHWM"
        else:
            mem.rss_method = "sampled"
            mem.rss_peak = mem.rss_start
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return mem

    def __exit__(self, *exc: object) -> None:
        mem = self.memory
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            mem.cuda_peak = torch.cuda.max_memory_allocated()
        if mem.rss_method == "VmHWM":
            mem.rss_peak = _status_kib("VmHWM") * 1024
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()
            now = rss_bytes()
            mem.rss_peak = max(mem.rss_peak or 0, now or 0)


# -- config -> built objects -> batches -------------------------------------------------------
@dataclass
class Setup:
    """What a run builds from one config, plus the training batches every case shares.

    Attributes:
        cfg: the composed config.
        settings: the engine settings of ``cfg.trainer``.
        built: ``distillkit.run.build``'s result (data, teacher, student, loss, pairs,
            cached_logits, logits_sources).
        batches: training batches from the run's training loader (``distil`` split, seeded,
            length-grouped as configured), as plain dicts of tensors; they carry
            ``teacher_logits`` when the run would read the teacher's cached logits.
        build_seconds: wall time of ``build`` (teacher stage and teacher logits included).
        build_memory: peak memory of ``build``.
        features: reads a batch's cached teacher features (its ``teacher_row``), when the
            run reads them (layer-wise losses).
    """

    cfg: DictConfig
    settings: EngineSettings
    built: dict[str, Any]
    batches: list[dict[str, torch.Tensor]]
    build_seconds: float
    build_memory: Memory
    features: FeatureCollator | None = None


def draw_batches(data: Any, settings: EngineSettings, count: int
                 ) -> tuple[list[dict], FeatureCollator | None]:
    """``count`` batches from the run's training loader, re-iterated (reshuffled) as needed.

    When the run reads cached teacher features, the batches keep their ``teacher_row`` and the
    loader's :class:`FeatureCollator` is returned beside them: the features are read from the
    cache when a case hands the batch to the trainer (:func:`with_features`), inside the timed
    steps, as a run's loader reads them.
    """
    loader = data.loader("distil", settings.batch_size, shuffle=True, seed=settings.seed,
                         by_length=settings.group_by_length)
    features = loader.collate_fn if isinstance(loader.collate_fn, FeatureCollator) else None
    if features is not None:
        loader.collate_fn = features.collate  # the features are added per case, timed
    batches: list[dict] = []
    while len(batches) < count:
        batches += [dict(b) for _, b in zip(range(count - len(batches)), loader, strict=False)]
    return batches, features


def without_features(batches: Sequence[dict]) -> list[dict]:
    """The batches without their cached-feature rows (cases that do not read the cache)."""
    return [{k: v for k, v in b.items() if k != ROW} for b in batches]


def prepare(overrides: Sequence[str], steps: int | None = None) -> Setup:
    """Composes ``overrides``, builds like a run and draws the batches for ``steps`` steps.

    Args:
        overrides: Hydra overrides (``trainer.progress=false`` is added).
        steps: optimizer steps the batches are for (sets ``trainer.max_steps``, so the LR
            schedule spans them); None keeps the config's ``trainer.max_steps``.
    """
    extra = ["trainer.progress=false"]
    if steps is not None:
        extra.append(f"trainer.max_steps={steps}")
    cfg = compose([*overrides, *extra])
    settings = engine_settings(cfg.trainer)
    if settings.max_steps is None:
        raise SystemExit("the bench needs a step count: set trainer.max_steps or --steps")
    set_seed(settings.seed)
    start = time.perf_counter()
    with PeakMemory() as memory:
        built = build(cfg, settings)
    seconds = time.perf_counter() - start
    batches, features = draw_batches(built["data"], settings,
                                     settings.max_steps * settings.grad_accum_steps)
    return Setup(cfg, settings, built, batches, seconds, memory, features)


def without_teacher_logits(batches: Sequence[dict]) -> list[dict]:
    """The same batches without precomputed teacher outputs (the live-teacher path)."""
    return [{k: v for k, v in b.items() if k not in ("teacher_logits", ROW)} for b in batches]


def loss_for(overrides: Sequence[str], setup: Setup) -> torch.nn.Module:
    """A fresh loss for ``overrides`` (e.g. ``loss=hard``), bound to ``setup``'s mapping."""
    loss = instantiate(compose(overrides).loss)
    bind = getattr(loss, "bind", None)
    if bind is not None:
        bind(setup.built["pairs"] if getattr(loss, "intermediate", None) else [],
             student_width=int(setup.built["student"].model.config.hidden_size),
             teacher_width=int(setup.built["teacher"].model.config.hidden_size))
    return loss


# -- timed training -------------------------------------------------------------------------
@dataclass
class Timing:
    """A timed training case.

    Attributes:
        seconds: wall time of the timed optimizer steps (after the warm-up).
        steps: timed optimizer steps.
        tokens: non-padding tokens in the timed steps' batches.
        memory: peak memory of the whole case (trainer construction, warm-up, timed steps).
        total_seconds: wall time of the whole case.
    """

    seconds: float
    steps: int
    tokens: int
    memory: Memory = field(default_factory=Memory)
    total_seconds: float = 0.0

    @property
    def seconds_per_step(self) -> float:
        """Mean wall time of one timed optimizer step."""
        return self.seconds / max(self.steps, 1)

    @property
    def steps_per_second(self) -> float:
        """Optimizer steps per second after the warm-up."""
        return self.steps / self.seconds if self.seconds > 0 else float("nan")

    @property
    def tokens_per_second(self) -> float:
        """Non-padding tokens per second after the warm-up."""
        return self.tokens / self.seconds if self.seconds > 0 else float("nan")


class TimedBatches(Sequence):
    """A fixed list of batches that notes the time when two given batches are handed out.

    A trainer asks for batch ``i`` once it has finished with batch ``i - 1`` (optimizer step
    included), so the time between handing out batch ``start`` and batch ``stop`` is the wall
    time of the optimizer steps in between. On CUDA the device is synchronised at both marks
    only, so the steps in between run asynchronously as in a real run.
    """

    def __init__(self, batches: Sequence[dict], start: int, stop: int,
                 device: torch.device, materialise: Callable[[dict], dict] | None = None
                 ) -> None:
        if not 0 <= start < stop < len(batches):
            raise ValueError(f"marks {start}..{stop} outside {len(batches)} batches")
        self._batches = list(batches)
        self._marks = {start: "start", stop: "stop"}
        self._cuda = device.type == "cuda"
        self._materialise = materialise
        self.times: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._batches)

    def __getitem__(self, index):
        return self._batches[index]

    def __iter__(self) -> Iterator[dict]:
        for i, batch in enumerate(self._batches):
            mark = self._marks.get(i)
            if mark is not None and mark not in self.times:
                if self._cuda:
                    torch.cuda.synchronize()
                self.times[mark] = time.perf_counter()
            yield batch if self._materialise is None else self._materialise(dict(batch))

    @property
    def seconds(self) -> float:
        """Wall time between the two marks (NaN when the trainer stopped before ``stop``)."""
        if "start" not in self.times or "stop" not in self.times:
            return float("nan")
        return self.times["stop"] - self.times["start"]


def timed_batches(batches: Sequence[dict], warmup: int, steps: int, accum: int,
                  device: torch.device, materialise: Callable[[dict], dict] | None = None
                  ) -> tuple[TimedBatches, int]:
    """Batches for ``warmup + steps + 1`` optimizer steps, timing steps ``warmup+1..warmup+steps``.

    The extra last step is run but not timed (a trainer's end-of-training work, such as
    TextBrewer's final checkpoint, stays out of the numbers). Returns the wrapped batches and
    the non-padding token count of the timed steps. ``materialise`` completes each batch as
    it is handed out (cached teacher features read then, timed with the steps).
    """
    needed = (warmup + steps + 1) * accum
    if len(batches) < needed:
        raise ValueError(f"{len(batches)} batches for {needed} needed")
    start, stop = warmup * accum, (warmup + steps) * accum
    tokens = sum(int(b["attention_mask"].sum()) for b in batches[start:stop])
    return TimedBatches(batches[:needed], start, stop, device, materialise), tokens


def train_distillkit(setup: Setup, student: torch.nn.Module, teacher: torch.nn.Module | None,
                     loss: torch.nn.Module, batches: Sequence[dict], warmup: int,
                     steps: int, materialise: Callable[[dict], dict] | None = None) -> Timing:
    """Trains ``student`` with distillkit's engine on ``batches`` as a run does.

    The engine gets the run's optimizer, schedule and loop settings and a TensorBoard writer
    (into a temporary directory), ``teacher=None`` for the cached-logits path exactly like
    ``distillkit.run.run``. Runs ``warmup + steps + 1`` optimizer steps and times ``steps``;
    ``materialise`` completes each batch when the engine takes it (see :func:`timed_batches`).
    """
    s = copy.copy(setup.settings)
    s.max_steps = warmup + steps + 1
    # the engine casts the teacher to trainer.teacher_precision in place: a copy keeps the
    # shared fp32 teacher intact for the other cases
    teacher = copy.deepcopy(teacher) if teacher is not None else None
    wrapped, tokens = timed_batches(batches, warmup, steps, s.grad_accum_steps,
                                    s.resolve_device(), materialise)
    set_seed(s.seed)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="distillkit-bench-tb-") as tb, \
            PeakMemory() as memory:
        writer = SummaryWriter(log_dir=tb)
        try:
            distiller = Distiller(student, teacher, loss,
                                  instantiate(setup.cfg.trainer.optimizer),
                                  instantiate(setup.cfg.trainer.scheduler), s, writer=writer)
            distiller.fit(wrapped)
        finally:
            writer.close()
    return Timing(wrapped.seconds, steps, tokens, memory, time.perf_counter() - start)


# -- TextBrewer -----------------------------------------------------------------------------
def textbrewer_version() -> str | None:
    """TextBrewer's version, or None when it is not installed (``pip install -e ".[bench]"``)."""
    try:
        import textbrewer
    except ImportError:
        return None
    return str(textbrewer.__version__)


# -- where it ran ---------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    """CPU model and cores, GPU, torch/transformers versions and torch's thread count."""
    import transformers

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as fh:
            names = re.findall(r"^model name\s*:\s*(.+)$", fh.read(), re.MULTILINE)
        if names:
            cpu = names[0].strip()
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 0
    return {
        "cpu": cpu, "cores": cores,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__, "transformers": transformers.__version__,
        "textbrewer": textbrewer_version(), "threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "python": platform.python_version(),
    }
