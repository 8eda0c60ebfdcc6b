"""Command line: ``python -m distillkit [overrides]`` (a Hydra app) and ``distillkit fetch``."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from omegaconf import DictConfig

from distillkit.errors import DistillkitError
from distillkit.schemas import register_schemas

log = logging.getLogger("distillkit")


def config_dir() -> str:
    """The built-in config directory: inside the installed package, or the repo's ``conf/``."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parents[1] / "conf"):
        if (candidate / "config.yaml").is_file():
            return str(candidate)
    raise RuntimeError(f"distillkit's conf/ directory was not found near {here}")


def _user_error(exc: BaseException) -> DistillkitError | None:
    """The DistillkitError behind ``exc`` (Hydra wraps errors raised during instantiate)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, DistillkitError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _task(cfg: DictConfig) -> float:
    from distillkit.run import run  # heavy imports only once the config composed

    out_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        metrics = run(cfg, out_dir)
    except KeyboardInterrupt:
        log.error("interrupted: run stopped; what was written so far stays in %s "
                  "(no metrics.json means the run did not finish)", out_dir)
        sys.exit(130)
    except InstantiationException as exc:
        user = _user_error(exc)
        log.error("error: %s", user if user else str(exc).replace("\n", " "))
        sys.exit(2)
    except DistillkitError as exc:
        log.error("error: %s", exc)
        sys.exit(exc.exit_code)
    return float(metrics["student"]["accuracy"])


def main() -> None:
    """Console entry point."""
    if len(sys.argv) > 1 and sys.argv[1] == "fetch":
        from distillkit.assets import main as fetch_main

        sys.exit(fetch_main(sys.argv[1:]))
    register_schemas()
    app = hydra.main(version_base="1.3", config_path=config_dir(), config_name="config")(_task)
    app()
