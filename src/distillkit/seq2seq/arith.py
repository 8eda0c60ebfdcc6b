"""A generated SVAMP-like arithmetic word-problem task with rationales (offline, seeded).

Every example is a short story problem built from one of several templates, with one or two
arithmetic steps (SVAMP, Patel et al., 2021, is the real-world model). Columns:

* ``question``: the problem text, lower case, punctuation split off (``tom has 5 apples .``);
* ``rationale``: the equation steps that solve it (``5 + 3 = 8 . 8 * 2 = 16 .``);
* ``label``: the answer, a whole number (``16``);
* ``steps``: 1 or 2; ``template``: the template's name.

Every step combines a number below 20 (an operand, or the first step's result) with one below 10
(results below 82), so the answer of a step is a table lookup a small model can learn;
two-step problems chain two of them. The same seed gives the same data everywhere (Python's
``random.Random``), so a teacher stage
and a generation cache keyed on the data are shared between runs.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from datasets import Dataset, DatasetDict

NAMES = ("tom", "anna", "sam", "lily", "ben", "mia", "jack", "emma")
THINGS = ("apples", "pens", "books", "stickers", "marbles", "cookies", "cards", "shells")
CONTAINERS = ("boxes", "bags", "packs", "jars")

# Whole-word entries of the task's WordPiece vocabulary (numbers become single tokens).
WORDS: tuple[str, ...] = (
    *NAMES, *THINGS, *CONTAINERS, "has", "had", "have", "does", "did", "do", "how", "many",
    "now", "left", "more", "buys", "gives", "away", "each", "holds", "shares", "them",
    "equally", "among", "friends", "friend", "get", "gets", "he", "she", "then", "loses",
    "finds", "there", "are", "of", "in", "all", "altogether", "and", "a", "the", "every",
    "day", "days", "for", "collects", "per", "total", "after", "that", "what", "is",
    "predict", "explain", "+", "-", "*", "/", "=", ".", "?", ":",
    *(str(n) for n in range(0, 1000)),
)

Example = dict[str, object]


def _add(rng: random.Random) -> Example:
    n, t = rng.choice(NAMES), rng.choice(THINGS)
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    return {"question": f"{n} has {a} {t} . {n} buys {b} more {t} . how many {t} does {n} "
                        f"have now ?", "rationale": f"{a} + {b} = {a + b} .", "label": a + b}


def _sub(rng: random.Random) -> Example:
    n, t = rng.choice(NAMES), rng.choice(THINGS)
    b = rng.randint(1, 9)
    a = b + rng.randint(1, 9)
    return {"question": f"{n} had {a} {t} . {n} gives away {b} {t} . how many {t} does {n} "
                        f"have left ?", "rationale": f"{a} - {b} = {a - b} .", "label": a - b}


def _mul(rng: random.Random) -> Example:
    n, t, c = rng.choice(NAMES), rng.choice(THINGS), rng.choice(CONTAINERS)
    a, b = rng.randint(2, 9), rng.randint(2, 9)
    return {"question": f"each of the {c} holds {a} {t} . {n} has {b} {c} . how many {t} does "
                        f"{n} have in all ?", "rationale": f"{a} * {b} = {a * b} .",
            "label": a * b}


def _div(rng: random.Random) -> Example:
    n, t = rng.choice(NAMES), rng.choice(THINGS)
    b, q = rng.randint(2, 9), rng.randint(1, 9)
    return {"question": f"{n} shares {b * q} {t} equally among {b} friends . how many {t} does "
                        f"each friend get ?", "rationale": f"{b * q} / {b} = {q} .", "label": q}


def _mul_sub(rng: random.Random) -> Example:
    n, t, c = rng.choice(NAMES), rng.choice(THINGS), rng.choice(CONTAINERS)
    a, b = rng.randint(2, 9), rng.randint(2, 9)
    d = rng.randint(1, 9)
    return {"question": f"each of the {c} holds {a} {t} . {n} buys {b} {c} and then gives "
                        f"away {d} {t} . how many {t} does {n} have now ?",
            "rationale": f"{a} * {b} = {a * b} . {a * b} - {d} = {a * b - d} .",
            "label": a * b - d}


def _add_mul(rng: random.Random) -> Example:
    n, t = rng.choice(NAMES), rng.choice(THINGS)
    a, b, k = rng.randint(1, 5), rng.randint(1, 4), rng.randint(2, 9)
    return {"question": f"every day {n} collects {a} {t} and finds {b} more {t} . how many "
                        f"{t} does {n} have after {k} days ?",
            "rationale": f"{a} + {b} = {a + b} . {a + b} * {k} = {(a + b) * k} .",
            "label": (a + b) * k}


def _sub_div(rng: random.Random) -> Example:
    n, t = rng.choice(NAMES), rng.choice(THINGS)
    b, q = rng.randint(2, 9), rng.randint(1, 9)
    lost = rng.randint(1, 9)
    total = b * q + lost
    return {"question": f"{n} has {total} {t} and loses {lost} {t} . {n} shares the rest "
                        f"equally among {b} friends . how many {t} does each friend get ?",
            "rationale": f"{total} - {lost} = {b * q} . {b * q} / {b} = {q} .", "label": q}


def _add_sub(rng: random.Random) -> Example:
    n, t = rng.choice(NAMES), rng.choice(THINGS)
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    d = rng.randint(1, min(9, a + b - 1))
    return {"question": f"{n} has {a} {t} and buys {b} more {t} . then {n} gives away {d} "
                        f"{t} . how many {t} does {n} have left ?",
            "rationale": f"{a} + {b} = {a + b} . {a + b} - {d} = {a + b - d} .",
            "label": a + b - d}


TEMPLATES: dict[str, tuple[int, Callable[[random.Random], Example]]] = {
    "add": (1, _add), "sub": (1, _sub), "mul": (1, _mul), "div": (1, _div),
    "mul_sub": (2, _mul_sub), "add_mul": (2, _add_mul), "sub_div": (2, _sub_div),
    "add_sub": (2, _add_sub),
}


def arith_problem(rng: random.Random, two_step_fraction: float = 0.5) -> Example:
    """One problem: a two-step template with probability ``two_step_fraction``."""
    steps = 2 if rng.random() < two_step_fraction else 1
    name = rng.choice([n for n, (s, _) in TEMPLATES.items() if s == steps])
    example = TEMPLATES[name][1](rng)
    return {**example, "label": str(example["label"]), "steps": steps, "template": name}


def arith_word_problems(
    n_train: int = 4000,
    n_validation: int = 300,
    n_test: int = 500,
    two_step_fraction: float = 0.5,
    seed: int = 0,
) -> DatasetDict:
    """Generates the arithmetic word-problem task (splits ``train``, ``validation``, ``test``).

    Args:
        n_train: training problems.
        n_validation: validation problems.
        n_test: test problems.
        two_step_fraction: share of two-step problems, in ``[0, 1]``.
        seed: the generator's seed; the same seed gives the same data everywhere.
    """
    rng = random.Random(seed)
    splits = {"train": n_train, "validation": n_validation, "test": n_test}
    return DatasetDict({
        name: Dataset.from_list([arith_problem(rng, two_step_fraction) for _ in range(n)])
        for name, n in splits.items() if n > 0
    })
