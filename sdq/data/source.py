"""Where a config-declared task's data is and which columns hold what (``task.*`` of conf/task/custom.yaml).

Files: ``train`` (one file, every row a training example) and ``eval``, a path template with ``{split}``
(``dev`` / ``test``) and optionally ``{lang}``; or ``dataset``: a Hugging Face hub name (+ ``dataset_config``),
a ``save_to_disk`` folder, or a folder / file of data files, whose ``splits`` map train/dev/test to its own.

>>> src = source_from_config({"train": "r/train.csv", "eval": "r/{split}.csv",
...                           "columns": {"text": "review", "label": "stars", "language": "lang"}}, "seq_cls")
>>> src.format, src.columns.text, src.eval_path("test", "de")
('csv', 'review', PosixPath('r/test.csv'))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdq.errors import SdqConfigError

FORMATS = ("csv", "tsv", "jsonl", "conll", "hf")
SPLITS = ("train", "dev", "test")
_SUFFIX = {".csv": "csv", ".tsv": "tsv", ".txt": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl",
           ".conll": "conll", ".conllu": "conll", ".iob": "conll", ".bio": "conll"}


@dataclass(frozen=True)
class Columns:
    """Column names. Token tasks: ``text`` holds the token list and ``label`` the tag list (JSONL/datasets).
    ``text_pair``: one column or several (joined with a space); ``query``: the query id of a rank task."""

    text: str = "text"
    label: str = "label"
    text_pair: tuple[str, ...] = ()
    language: str | None = None
    query: str | None = None


@dataclass(frozen=True)
class DataSource:
    """The files or dataset of one task (see the module docstring)."""

    format: str | None  # None: no data given yet (conf/task/custom.yaml as shipped)
    train: str | None = None
    eval: str | None = None
    dataset: str | None = None
    dataset_config: str | None = None
    splits: tuple[tuple[str, str], ...] = (("train", "train"), ("dev", "validation"), ("test", "test"))
    columns: Columns = field(default_factory=Columns)
    default_language: str = "en"  # the language of rows with no language column and files without {lang}

    def check(self) -> None:
        """SdqConfigError when no data is given (the task config composes without it: set it per run)."""
        if self.format is None:
            raise SdqConfigError(
                "task: no data; set task.train=<file> and task.eval=<template with {split}> "
                "(e.g. 'task.eval=\"data/{lang}.{split}.csv\"'), or task.dataset=<datasets name or folder>")

    @property
    def is_dataset(self) -> bool:
        return self.dataset is not None

    def split_name(self, split: str) -> str:
        """The dataset's own name of ``split`` (``dev`` -> ``validation`` by default)."""
        return dict(self.splits).get(split, split)

    def eval_path(self, split: str, lang: str | None = None) -> Path:
        """The dev/test file of ``split`` (and ``lang`` where the template has ``{lang}``)."""
        return Path(str(self.eval).replace("{split}", split).replace("{lang}", lang or "{lang}"))

    @property
    def per_language_files(self) -> bool:
        return self.eval is not None and "{lang}" in self.eval


def _format_of(path: str, kind: str) -> str:
    fmt = _SUFFIX.get(Path(path).suffix.lower())
    if fmt is None:
        raise SdqConfigError(f"task.train={path}: cannot tell the format from the suffix; set task.format to one "
                             f"of {', '.join(f for f in FORMATS if f != 'hf')}")
    if kind == "token_cls" and fmt == "tsv":
        return "conll"  # token TAG lines
    return fmt


def _names(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    return tuple(str(v) for v in value) if isinstance(value, (list, tuple)) else (str(value),)


def source_from_config(task: dict, kind: str) -> DataSource:
    """A :class:`DataSource` from a plain ``task`` config dict (checked: one source, known format, templates)."""
    train, evals, dataset = task.get("train"), task.get("eval"), task.get("dataset")
    if dataset is not None and (train is not None or evals is not None):
        raise SdqConfigError("task.dataset and task.train/task.eval are both set; use one source")
    if dataset is None and (train is None) != (evals is None):
        raise SdqConfigError(f"task.{'eval' if evals is None else 'train'} is not set; own files need both "
                             "task.train=<file> and task.eval=<template with {split}>")
    fmt = task.get("format")
    if dataset is not None:
        fmt = "hf"
    elif train is None:
        fmt = None  # no data yet: DataSource.check() refuses it where data is read
    elif fmt is None:
        fmt = _format_of(str(train), kind)
    if fmt is not None and fmt not in FORMATS:
        raise SdqConfigError(f"task.format={fmt!r} is unknown; use one of: {', '.join(FORMATS)}")
    if fmt == "hf" and dataset is None:
        raise SdqConfigError("task.format=hf needs task.dataset=<datasets name, save_to_disk folder or data files>")
    if kind == "token_cls" and fmt in ("csv", "tsv"):
        raise SdqConfigError(f"task.format={fmt} cannot hold a token task; use conll (token TAG lines) or jsonl "
                             "(a token list and a tag list per line)")
    if kind != "token_cls" and fmt == "conll":
        raise SdqConfigError(f"task.format=conll holds token tasks; set task.kind=token_cls (not {kind})")
    if evals is not None and "{split}" not in str(evals):
        raise SdqConfigError(f"task.eval={evals}: the template needs {{split}} (dev and test files), e.g. "
                             "data/{lang}.{split}.csv")
    cols = dict(task.get("columns") or {})
    columns = Columns(
        text=str(cols.get("text") or "text"), label=str(cols.get("label") or "label"),
        text_pair=_names(cols.get("text_pair")),
        language=str(cols["language"]) if cols.get("language") else None,
        query=str(cols["query"]) if cols.get("query") else None,
    )
    if kind == "pair_cls" and not columns.text_pair:
        raise SdqConfigError("task.kind=pair_cls needs task.columns.text_pair (the second text's column)")
    if kind == "rank" and columns.query is None:
        raise SdqConfigError("task.kind=rank needs task.columns.query (the column of the query id)")
    splits = dict(DataSource.__dataclass_fields__["splits"].default)
    splits.update({str(k): str(v) for k, v in (task.get("splits") or {}).items()})
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown:
        raise SdqConfigError(f"task.splits: {', '.join(unknown)} unknown; map train, dev, test to the dataset's splits")
    return DataSource(
        format=fmt, train=str(train) if train is not None else None, eval=str(evals) if evals is not None else None,
        dataset=str(dataset) if dataset is not None else None,
        dataset_config=str(task["dataset_config"]) if task.get("dataset_config") else None,
        splits=tuple(splits.items()), columns=columns,
        default_language=str(task.get("default_language") or "en"),
    )
