"""Tiny valid XGLUE datasets in the official layout, for fast tests of every room.

>>> root = write_fixture(tmp_path)                        # all 8 tasks, en + 1 more language
>>> read_split(root, "ner", "en", "train")[0]["tokens"]   # ['Anna', 'visits', ...]
"""

from __future__ import annotations

import random
from pathlib import Path

from sdq.data.tasks import TASKS, TaskSpec, get_task
from sdq.data.xglue import split_path

_WORDS = (
    "the", "cat", "sat", "on", "a", "mat", "while", "dogs", "ran", "across", "green", "fields", "under",
    "bright", "blue", "skies", "and", "people", "talked", "about", "news", "sports", "travel", "food",
    "health", "money", "music", "films", "games", "weather",
)  # fmt: skip
_NAMES = ("Anna", "Berlin", "Paris", "Microsoft", "Madrid", "Pedro", "Amsterdam", "UNESCO")


def _sentence(rng: random.Random, lo: int = 3, hi: int = 9) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(lo, hi)))


def _bio(rng: random.Random, n: int) -> list[str]:
    """A valid BIO sequence of length n (I- only after B-/I- of the same type)."""
    tags, i = [], 0
    while i < n:
        if rng.random() < 0.35:
            typ = rng.choice(("PER", "ORG", "LOC", "MISC"))
            span = min(rng.randint(1, 2), n - i)
            tags += [f"B-{typ}"] + [f"I-{typ}"] * (span - 1)
            i += span
        else:
            tags.append("O")
            i += 1
    return tags


def _sentence_lines(spec: TaskSpec, rng: random.Random, n: int) -> list[str]:
    lines = []
    for i in range(n):
        label = spec.labels[i % len(spec.labels)]  # every label appears
        a, b = _sentence(rng), _sentence(rng)
        if spec.name == "pawsx":
            lines.append(f"{i}\t{a}\t{b}\t{label}")
        elif spec.name in ("qadsm", "wpr"):
            query = f"query {i // 3}" if spec.name == "wpr" else _sentence(rng, 1, 3)
            lines.append(f"{query}\t{a}\t{b}\t{label}")
        elif spec.name == "sib200":
            lines.append(f"{i}\t{label}\t{a}")
        else:
            lines.append(f"{a}\t{b}\t{label}")
    return lines


def _token_lines(spec: TaskSpec, rng: random.Random, n: int) -> list[str]:
    lines = []
    for _ in range(n):
        k = rng.randint(2, 8)
        tags = _bio(rng, k) if spec.name == "ner" else [rng.choice(spec.labels) for _ in range(k)]
        for tag in tags:
            word = rng.choice(_NAMES) if tag != "O" and spec.name == "ner" else rng.choice(_WORDS)
            sep = rng.choice((" ", "\t"))  # both separators occur in the wild
            lines.append(f"{word}{sep}{tag}")
        lines.append("")
    return lines


def write_split(root: Path, spec: TaskSpec, lang: str, split: str, n: int, seed: int) -> Path:
    """Write one (task, language, split) file with ``n`` examples; returns its path."""
    rng = random.Random(f"{seed}-{spec.name}-{lang}-{split}")
    lines = _token_lines(spec, rng, n) if spec.is_token_task else _sentence_lines(spec, rng, n)
    if spec.name == "xnli" and split == "train":
        lines = ["premise\thypo\tlabel"] + lines
    elif spec.name == "pawsx":
        lines = ["id\tsentence1\tsentence2\tlabel"] + lines
    elif spec.name == "sib200":
        lines = ["index_id\tcategory\ttext"] + lines
    path = split_path(root, spec, lang, split)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_fixture(
    root: Path, tasks: list[str] | None = None, langs_per_task: int = 2, n: int = 12, seed: int = 0
) -> Path:
    """Write English train/dev/test and dev/test of the next ``langs_per_task - 1`` languages
    of each task (default: the 8 XGLUE tasks) under ``root``; returns ``root``."""
    root = Path(root)
    names = tasks if tasks is not None else [t for t in TASKS if t != "sib200"]
    for name in names:
        spec = get_task(name)
        for j, lang in enumerate(spec.languages[:langs_per_task]):
            for split in ("train", "dev", "test") if j == 0 else ("dev", "test"):
                write_split(root, spec, lang, split, n, seed)
    return root
