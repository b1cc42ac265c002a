"""A Hugging Face ``datasets`` source: a ``save_to_disk`` folder, a folder or file of data files, or a hub
name (+ config); its splits as records (see :mod:`sdq.data.own_files`), class-label ids as names.

>>> splits, names = read_dataset(source, token_task=False)   # {"train": [...], "dev": [...], "test": [...]}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sdq.data.hub import hub_reachable
from sdq.data.own_files import missing_column, needed_columns, record
from sdq.data.source import SPLITS, DataSource
from sdq.errors import SdqDataError

_BUILDER = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


def _first_line(e: Exception) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0]


def load(source: DataSource) -> Any:
    """The dataset (a ``DatasetDict``) named by ``source.dataset``; SdqDataError when it cannot be loaded."""
    import datasets

    name, path = source.dataset, Path(source.dataset)
    try:
        if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
            return datasets.load_from_disk(str(path))
        if path.is_file():
            kw = {"delimiter": "\t"} if path.suffix == ".tsv" else {}
            if path.suffix not in _BUILDER:
                raise SdqDataError(f"task.dataset={name}: unknown data-file type {path.suffix!r}; use "
                                   f"{', '.join(_BUILDER)}, or task.train/task.eval for own files")
            return datasets.load_dataset(_BUILDER[path.suffix], data_files=str(path), **kw)
        if path.is_dir():
            return datasets.load_dataset(str(path), source.dataset_config)
        if not hub_reachable():
            raise SdqDataError(f"task.dataset={name}: no such local folder or file, and the Hugging Face hub is "
                               "unreachable (offline); pass a save_to_disk folder or data files, or go online")
        return datasets.load_dataset(name, source.dataset_config)
    except SdqDataError:
        raise
    except Exception as e:  # noqa: BLE001 - any datasets failure becomes one user-facing line
        raise SdqDataError(f"task.dataset={name}: unreadable dataset ({type(e).__name__}: {_first_line(e)}); "
                           "pass a save_to_disk folder, data files or a hub name (+ task.dataset_config)") from None


def _class_names(ds: Any, column: str) -> list[str] | None:
    feat = ds.features.get(column)
    feat = getattr(feat, "feature", feat)  # Sequence(ClassLabel) -> ClassLabel
    return list(feat.names) if hasattr(feat, "names") else None


def read_dataset(source: DataSource, token_task: bool) -> tuple[dict[str, list[dict]], list[str] | None]:
    """Records of train/dev/test and the label column's class names (None when it holds plain values)."""
    dd = load(source)
    if not hasattr(dd, "keys"):  # a single Dataset
        raise SdqDataError(f"task.dataset={source.dataset}: one split only; save a DatasetDict with "
                           "train/validation/test splits (or map them with task.splits)")
    out: dict[str, list[dict]] = {}
    names: list[str] | None = None
    for split in SPLITS:
        theirs = source.split_name(split)
        if theirs not in dd:
            raise SdqDataError(f"task.dataset={source.dataset}: no split {theirs!r} for {split} (splits: "
                               f"{', '.join(dd.keys())}); set task.splits.{split}=<one of them>")
        ds = dd[theirs]
        where = f"{source.dataset}[{theirs}]"
        for key, col in needed_columns(source.columns):
            if col not in ds.column_names:
                raise missing_column(where, key, col, list(ds.column_names))
        if len(ds) == 0:
            raise SdqDataError(f"{where}: no examples; every split needs examples")
        names = names or _class_names(ds, source.columns.label)
        split_names = _class_names(ds, source.columns.label)
        recs = []
        for i, row in enumerate(ds):
            if split_names is not None:
                raw = row[source.columns.label]
                if min(raw if token_task else [raw], default=0) < 0:
                    raise SdqDataError(f"{where} row {i}: unlabeled (class id {raw}); every {split} row needs "
                                       "a label (map another split with task.splits)")
                row = {**row, source.columns.label: [split_names[v] for v in raw] if token_task
                       else split_names[raw]}
            recs.append(record(row, source.columns, token_task, source.default_language, f"{where} row {i}"))
        out[split] = recs
    return out, names
