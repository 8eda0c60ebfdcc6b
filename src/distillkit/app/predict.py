"""``distillkit predict <run dir or student dir> <file or ->``: the student on new text.

Loads a distilled student (a run directory's ``student/``, or any ``save_pretrained``
sequence-classification directory), reads the texts (:mod:`distillkit.app.predict_inputs`) and
writes one row per input, in input order: the input's id (when it has an id column), the
predicted label and the probability of every label (``p_<label>``), as CSV or JSON lines, to
a file or stdout, in batches, with a progress bar on stderr.

The text column(s), the id column and the truncation length default to those the run was
trained with, read from the run's ``resolved_config.yaml`` (or ``.hydra/config.yaml``) when
there is one; ``--text-column``, ``--text-pair-column``, ``--id-column`` and ``--max-length``
set them otherwise. The same student works with transformers alone:
``pipeline("text-classification", model="<run>/student")`` gives the same labels.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from distillkit.app.predict_inputs import FORMATS, Inputs, read_input, select_columns
from distillkit.errors import DataError, DistillkitError, ModelError

log = logging.getLogger("distillkit")
RUN_CONFIGS = ("resolved_config.yaml", ".hydra/config.yaml")


@dataclass
class Student:
    """Where the student is and what its run says about its inputs.

    Attributes:
        model_dir: the ``save_pretrained`` directory.
        config: the run's config file, if found.
        data: the run's ``data`` settings (``text_column``, ``text_pair_column``,
            ``id_column``, ``max_length``), empty without a run config.
    """

    model_dir: Path
    config: Path | None = None
    data: dict[str, Any] = field(default_factory=dict)


def _run_config(run_dir: Path) -> tuple[Path | None, dict[str, Any]]:
    """The run's data settings from its saved config (first of :data:`RUN_CONFIGS`)."""
    from omegaconf import OmegaConf

    for name in RUN_CONFIGS:
        path = run_dir / name
        if not path.is_file():
            continue
        cfg = OmegaConf.load(path)
        task = cfg.get("task", "classification")
        task = task.get("name") if OmegaConf.is_dict(task) else task
        if task != "classification":
            raise ModelError(f"{run_dir} is a task={task} run; distillkit predict "
                             "classifies text (task=classification runs)")
        data = cfg.get("data") or {}
        keys = ("text_column", "text_pair_column", "id_column", "max_length")
        return path, {k: OmegaConf.select(data, k, throw_on_resolution_failure=False)
                      for k in keys}
    return None, {}


def locate(path: str) -> Student:
    """The student behind ``path``: a run directory or a ``save_pretrained`` directory.

    Raises:
        ModelError: when ``path`` is neither (naming what was looked for).
    """
    where = Path(path).expanduser()
    if not where.is_dir():
        raise ModelError(f"model directory not found: {where}; pass a run directory "
                         "(outputs/<date>/<time>) or a student directory (<run>/student)")
    if (where / "student" / "config.json").is_file():
        config, data = _run_config(where)
        return Student(where / "student", config, data)
    if (where / "config.json").is_file():
        config, data = _run_config(where.parent) if where.name == "student" else (None, {})
        return Student(where, config, data)
    if any((where / name).is_file() for name in RUN_CONFIGS):
        raise ModelError(f"{where} is a run directory without a student/ (was it run with "
                         "export_student=false, or did it not finish?); pass a run that "
                         "exported its student")
    raise ModelError(f"{where} is not a model directory: no student/config.json and no "
                     "config.json; pass a run directory (outputs/<date>/<time>) or a "
                     "save_pretrained directory")


def load_student(student: Student, device: str) -> tuple[Any, Any]:
    """The model (eval mode, on ``device``) and tokenizer of ``student``."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(student.model_dir)
        model = AutoModelForSequenceClassification.from_pretrained(student.model_dir)
    except (OSError, ValueError, KeyError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelError(f"cannot load a text classifier from {student.model_dir}: {first}; "
                         "pass a run directory or a save_pretrained sequence-classification "
                         "directory (model and tokenizer)") from exc
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return model.to(device).eval(), tokenizer


def _max_length(student: Student, given: int | None, model: Any, tokenizer: Any) -> int:
    if given is not None:
        return given
    if student.data.get("max_length"):
        return int(student.data["max_length"])
    limits = [tokenizer.model_max_length, model.config.max_position_embeddings or 512, 512]
    return int(min(limits))


def predict_batches(model: Any, tokenizer: Any, inputs: Inputs, batch_size: int,
                    max_length: int) -> Iterator[tuple[int, list[list[float]]]]:
    """The probabilities of every label, batch by batch: (first row, rows of probabilities)."""
    import torch

    device = next(model.parameters()).device
    for start in range(0, len(inputs.texts), batch_size):
        texts = inputs.texts[start:start + batch_size]
        args = (texts,) if inputs.pairs is None else (texts,
                                                      inputs.pairs[start:start + batch_size])
        enc = tokenizer(*args, truncation=True, max_length=max_length, padding=True,
                        return_tensors="pt").to(device)
        with torch.inference_mode():
            probs = model(**enc).logits.float().softmax(-1)
        yield start, probs.cpu().tolist()


class RowWriter:
    """Writes prediction rows as CSV (header first) or JSON lines."""

    def __init__(self, fh: IO[str], fmt: str, labels: list[str], id_column: str | None):
        self.fh, self.fmt, self.labels, self.id_column = fh, fmt, labels, id_column
        self.columns = ([id_column] if id_column else []) + ["label"] + [
            f"p_{name}" for name in labels]
        self._csv = csv.writer(fh, lineterminator="\n") if fmt == "csv" else None
        if self._csv is not None:
            self._csv.writerow(self.columns)

    def write(self, row_id: str | None, probs: list[float]) -> None:
        best = max(range(len(probs)), key=probs.__getitem__)
        values = ([row_id] if self.id_column else []) + [self.labels[best]] + [
            round(p, 6) for p in probs]
        if self._csv is not None:
            self._csv.writerow(values)
        else:
            self.fh.write(json.dumps(dict(zip(self.columns, values, strict=True))) + "\n")


def predict(model_path: str, source: str, out: IO[str], fmt: str = "csv",
            text_column: str | None = None, text_pair_column: str | None = None,
            id_column: str | None = None, batch_size: int = 32, max_length: int | None = None,
            input_format: str | None = None, device: str = "auto",
            progress: bool = True) -> int:
    """Classifies the texts of ``source`` with the student at ``model_path`` into ``out``.

    Every check (model, input, columns, texts) runs before the first row is written.

    Returns:
        The number of rows written.
    """
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise DataError(f"--batch-size {batch_size} must be at least 1")
    student = locate(model_path)
    rows, read_as = read_input(source, input_format)
    data = student.data
    text = text_column or data.get("text_column") or "text"
    pair = text_pair_column or data.get("text_pair_column")
    id_name = id_column or data.get("id_column") or "id"
    where = "<stdin>" if source == "-" else source
    inputs = select_columns(rows, read_as, where, text, pair, id_name, id_column is not None)
    model, tokenizer = load_student(student, device)
    labels = [str(model.config.id2label.get(i, i)) for i in range(model.config.num_labels)]
    length = _max_length(student, max_length, model, tokenizer)
    log.info("predicting %d rows of %s with %s (text column '%s'%s; max length %d)",
             len(inputs.texts), where, student.model_dir, text,
             f", pair column '{pair}'" if pair else "", length)
    writer = RowWriter(out, fmt, labels, inputs.id_column)
    bar = tqdm(total=len(inputs.texts), desc="predict", unit="rows", file=sys.stderr,
               disable=not progress)
    with bar:
        for start, probs in predict_batches(model, tokenizer, inputs, batch_size, length):
            for offset, row in enumerate(probs):
                writer.write(None if inputs.ids is None else inputs.ids[start + offset], row)
            bar.update(len(probs))
    return len(inputs.texts)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="distillkit predict",
        description="Classify texts with a distilled student: one output row per input row "
                    "(its id, the predicted label, p_<label> for every label).")
    p.add_argument("model", help="a run directory (outputs/<date>/<time>) or a student "
                   "directory (<run>/student, any save_pretrained classifier)")
    p.add_argument("input", help="a .csv/.tsv/.jsonl/.json file, a .txt file (one text per "
                   "line), or - for stdin (JSON lines, or one text per line)")
    p.add_argument("--output", "-o", help="write here (default: stdout)")
    p.add_argument("--format", choices=("csv", "jsonl"), default=None,
                   help="output format (default: from --output's extension, else csv)")
    p.add_argument("--text-column", help="the text column (default: the run's "
                   "data.text_column, else 'text')")
    p.add_argument("--text-pair-column", help="the second text of a pair (default: the "
                   "run's data.text_pair_column)")
    p.add_argument("--id-column", help="copy this column to the output (default: the run's "
                   "data.id_column, else 'id', when the input has it)")
    p.add_argument("--batch-size", type=int, default=32, help="rows per batch (default 32)")
    p.add_argument("--max-length", type=int, help="truncation length in tokens (default: "
                   "the run's data.max_length)")
    p.add_argument("--input-format", choices=sorted(set(FORMATS.values())),
                   help="read the input as this format instead of by its extension")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: auto)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    return p


def main(argv: list[str]) -> int:
    """``distillkit predict``; returns the exit code (2 with one ``error:`` line)."""
    from distillkit.runtime.io import write_file

    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    fmt = args.format or ("jsonl" if args.output and Path(args.output).suffix.lower()
                          in (".jsonl", ".json") else "csv")
    kwargs = {"fmt": fmt, "text_column": args.text_column,
              "text_pair_column": args.text_pair_column, "id_column": args.id_column,
              "batch_size": args.batch_size, "max_length": args.max_length,
              "input_format": args.input_format, "device": args.device,
              "progress": not args.no_progress}

    def write(fh: IO[bytes]) -> None:
        text = io.TextIOWrapper(fh, encoding="utf-8", newline="")
        predict(args.model, args.input, text, **kwargs)
        text.flush()
        text.detach()  # the binary handle stays open for write_file to close
    try:
        if args.output is None:
            predict(args.model, args.input, sys.stdout, **kwargs)
        else:  # atomically: a failed run leaves no half-written file
            write_file(Path(args.output), write)
    except DistillkitError as exc:
        log.error("error: %s", exc)
        return exc.exit_code
    except BrokenPipeError:  # e.g. | head: the reader has what it wanted
        sys.stdout = None  # nothing more to flush at exit
        return 0
    except OSError as exc:
        log.error("error: cannot write %s: %s; pass another --output", args.output,
                  exc.strerror or exc)
        return 2
    if args.output is not None:
        log.info("predictions written to %s", args.output)
    return 0
