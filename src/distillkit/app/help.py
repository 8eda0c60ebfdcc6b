"""``python -m distillkit --help``: the options a user can pick, one line per config group.

Hydra's own list shows every entry of its ConfigStore, which includes the typed schemas
(:mod:`distillkit.app.schemas`) that the group options extend; those are not options. This
lists the YAML files of each group folder of distillkit's ``conf/`` instead, through the
``${distillkit.groups:}`` resolver that ``hydra.help.template`` (``conf/config.yaml``) reads.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

RESOLVER = "distillkit.groups"


def config_groups(conf: Path) -> str:
    """``group: option, option`` lines for the group folders of ``conf`` (``hydra/`` aside)."""
    lines = []
    for folder in sorted(p for p in conf.iterdir() if p.is_dir() and p.name != "hydra"):
        options = sorted(p.stem for p in folder.glob("*.yaml"))
        if options:
            lines.append(f"{folder.name}: {', '.join(options)}")
    return "\n".join(lines)


def register(conf: Path) -> None:
    """Registers ``${distillkit.groups:}`` (the option list of ``conf``) once."""
    if not OmegaConf.has_resolver(RESOLVER):
        OmegaConf.register_new_resolver(RESOLVER, lambda: config_groups(conf))
