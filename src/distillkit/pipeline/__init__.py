"""The run graph as an object: a list of stages (:class:`Stage`) that hand each other what
they built through one :class:`RunContext`, executed by :func:`run_stages`.

The stage list of a task and mode is declared in ``conf/task/<task>.yaml`` (``pipeline:``),
so ``python -m distillkit --cfg job`` shows it; the names are the built-in stages of
:mod:`distillkit.stages`.
"""

from distillkit.pipeline.context import RunContext
from distillkit.pipeline.runner import run_stages
from distillkit.pipeline.stage import ORIGINS, Stage

__all__ = ["ORIGINS", "RunContext", "Stage", "run_stages"]
