"""Unlabeled inputs for self-distillation (``conf/unlabeled/``): text (and text pairs) in any languages,
without labels, read from files or a ``datasets`` dataset, and how many of each language to use.

``path`` is one file, a glob, or a template with ``{lang}`` (every file matching it, the language taken from
the name); rows without a language column get ``default_language``. CSV / TSV with or without a header
(``header: false``: ``columns`` are 0-based positions), JSONL. ``dataset``: a ``save_to_disk`` folder, data
files or a hub name (+ ``dataset_config``, ``split``).

>>> spec = UnlabeledSpec.from_config({"path": "XNLI/unlabeled/{lang}.tsv", "header": False,
...                                   "columns": {"text": 0, "text_pair": 1}, "per_language": 1000})
>>> rows = read_unlabeled(spec, seed=42)        # {"de": [{"text": ..., "text_pair": ...}, ...], ...}
>>> language_counts({"de": 5010, "sw": 900}, per_language=1000, sampling="uniform")
{'de': 1000, 'sw': 900}
"""

from __future__ import annotations

import csv
import glob
import io
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdq.errors import SdqConfigError, SdqDataError

SAMPLING = ("uniform", "temperature")
_FORMATS = {".csv": "csv", ".tsv": "tsv", ".txt": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}


@dataclass(frozen=True)
class UnlabeledSpec:
    """Where the unlabeled inputs are and how many of each language a run uses (see the module doc)."""

    path: str | None = None
    dataset: str | None = None
    dataset_config: str | None = None
    split: str = "train"
    format: str | None = None  # csv | tsv | jsonl; None = from the file suffix
    header: bool = True
    text: Any = "text"  # column name, or position when header is false
    text_pair: Any = None
    language: Any = None
    default_language: str = "xx"
    languages: tuple[str, ...] | None = None  # None = every language found
    per_language: int | None = 1000  # at most this many per language (seeded draw); None = all
    sampling: str = "uniform"  # uniform: per_language each | temperature: ~ size^(1/temperature)
    temperature: float = 1.0
    ratio: float = 1.0  # unlabeled examples per labelled example in every training step

    @property
    def enabled(self) -> bool:
        return bool(self.path or self.dataset)

    @classmethod
    def from_config(cls, node: dict | None) -> UnlabeledSpec:
        """From ``unlabeled.*`` (a plain dict); SdqConfigError on unknown values."""
        d = dict(node or {})
        cols = dict(d.pop("columns", None) or {})
        langs = d.pop("languages", None)
        spec = cls(text=cols.get("text", "text"), text_pair=cols.get("text_pair"), language=cols.get("language"),
                   languages=tuple(str(x) for x in langs) if langs else None,
                   **{k: v for k, v in d.items()
                      if k in cls.__dataclass_fields__ and k not in ("text", "text_pair", "language")})
        if spec.sampling not in SAMPLING:
            raise SdqConfigError(f"unlabeled.sampling={spec.sampling!r} is unknown; use one of {', '.join(SAMPLING)}")
        if spec.format not in (None, "csv", "tsv", "jsonl"):
            raise SdqConfigError(f"unlabeled.format={spec.format!r} is unknown; use csv, tsv or jsonl")
        if spec.ratio <= 0 or (spec.per_language is not None and spec.per_language <= 0) or spec.temperature <= 0:
            raise SdqConfigError("unlabeled.ratio, unlabeled.per_language and unlabeled.temperature must be > 0 "
                                 "(unlabeled=none turns the unlabeled data off)")
        return spec


def language_counts(available: dict[str, int], per_language: int | None, sampling: str = "uniform",
                    temperature: float = 1.0) -> dict[str, int]:
    """Examples to draw per language. ``uniform``: ``min(n_l, per_language)``. ``temperature``: the same
    total ``C = sum_l min(n_l, per_language)`` shared as ``p_l ~ n_l^(1/T)`` (T = 1: as the data is, large T:
    towards uniform), each capped at ``n_l``.

    >>> language_counts({"en": 900, "sw": 100}, None, "temperature", 2.0)   # p ~ 30 : 10
    {'en': 750, 'sw': 100}
    """
    capped = {k: n if per_language is None else min(n, per_language) for k, n in available.items()}
    if sampling == "uniform":
        return capped
    total = sum(capped.values())
    w = {k: n ** (1.0 / temperature) for k, n in available.items()}
    z = sum(w.values()) or 1.0
    return {k: min(available[k], round(total * w[k] / z)) for k in available}


def _files(spec: UnlabeledSpec) -> dict[str, list[Path]]:
    """{language: files} of ``spec.path`` (``{lang}`` in the name gives the language)."""
    pattern = str(Path(spec.path).expanduser())
    if "{lang}" in pattern:
        head, _, tail = pattern.partition("{lang}")
        rx = re.compile(re.escape(head) + r"(?P<lang>[^/]+?)" + re.escape(tail) + "$")
        found: dict[str, list[Path]] = {}
        for f in sorted(glob.glob(head + "*" + tail)):
            m = rx.match(f)
            if m:
                found.setdefault(m["lang"], []).append(Path(f))
    else:
        files = [Path(f) for f in sorted(glob.glob(pattern))] or ([Path(pattern)] if Path(pattern).is_file() else [])
        found = {spec.default_language: files} if files else {}
    if not found:
        raise SdqDataError(f"unlabeled.path={spec.path}: no file matches; give a file, a glob or a template with "
                           "{lang} (e.g. 'unlabeled.path=\"data/unlabeled/{lang}.tsv\"'), or unlabeled=none")
    return found


def _value(row: Any, col: Any, where: str, what: str, required: bool = True) -> str | None:
    try:
        v = row[col]
    except (KeyError, IndexError, TypeError):
        v = None
    if v is None or not str(v).strip():
        if not required:
            return None
        raise SdqDataError(f"{where}: no {what} (unlabeled.columns: {col!r}); fix the row or set unlabeled.columns")
    return str(v)


def _record(row: Any, spec: UnlabeledSpec, lang: str, where: str) -> dict:
    if spec.language is not None:
        lang = _value(row, spec.language, where, "language").strip()
    pair = _value(row, spec.text_pair, where, "text pair") if spec.text_pair is not None else None
    return {"text": _value(row, spec.text, where, "text"), "text_pair": pair, "lang": lang, "where": where}


def _rows_of_file(path: Path, spec: UnlabeledSpec, lang: str) -> list[dict]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise SdqDataError(f"{path}: unreadable ({type(e).__name__}); save it as UTF-8 text") from None
    fmt = spec.format or _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise SdqDataError(f"{path}: unknown file type {path.suffix!r}; set unlabeled.format=csv|tsv|jsonl")
    out = []
    if fmt == "jsonl":
        for i, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise SdqDataError(f"{path}:{i}: not a JSON object ({e.msg}); one object per line") from None
                out.append(_record(row, spec, lang, f"{path}:{i}"))
    else:
        delim = "," if fmt == "csv" else "\t"
        reader = csv.reader(io.StringIO(text), delimiter=delim, quoting=csv.QUOTE_MINIMAL if fmt == "csv" else
                            csv.QUOTE_NONE)
        header = next(reader, None) if spec.header else None
        for row in reader:
            if any(x.strip() for x in row):
                where = f"{path}:{reader.line_num}"
                out.append(_record(dict(zip(header, row)) if header else row, spec, lang, where))
    return out


def _rows_of_dataset(spec: UnlabeledSpec) -> dict[str, list[dict]]:
    import datasets  # optional at import time: only runs that name a dataset need it

    p = Path(spec.dataset).expanduser()
    try:
        ds = datasets.load_from_disk(str(p)) if p.is_dir() else datasets.load_dataset(spec.dataset,
                                                                                          spec.dataset_config)
    except Exception as e:  # noqa: BLE001 - any datasets failure becomes one user-facing line
        raise SdqDataError(f"unlabeled.dataset={spec.dataset}: unreadable ({type(e).__name__}); pass a save_to_disk "
                           "folder, or a hub name while online") from None
    if hasattr(ds, "keys"):
        if spec.split not in ds:
            raise SdqDataError(f"unlabeled.dataset={spec.dataset}: no split {spec.split!r} (has {', '.join(ds)}); "
                               "set unlabeled.split")
        ds = ds[spec.split]
    out: dict[str, list[dict]] = {}
    for i, row in enumerate(ds):
        rec = _record(row, spec, spec.default_language, f"{spec.dataset}[{i}]")
        out.setdefault(rec["lang"], []).append(rec)
    return out


def read_unlabeled(spec: UnlabeledSpec, seed: int = 0) -> dict[str, list[dict]]:
    """{language: rows} to distil on: every source row read and checked, then ``language_counts`` of each
    language drawn with a seeded RNG (in file order). SdqDataError on missing files, empty text or no rows."""
    if spec.dataset:
        per_lang = _rows_of_dataset(spec)
    else:
        per_lang = {}
        for lang, files in _files(spec).items():
            for f in files:
                for rec in _rows_of_file(f, spec, lang):
                    per_lang.setdefault(rec["lang"], []).append(rec)
    if spec.languages is not None:
        missing = [x for x in spec.languages if x not in per_lang]
        if missing:
            raise SdqDataError(f"unlabeled.languages: none of {', '.join(missing)} in {spec.path or spec.dataset} "
                               f"(found: {', '.join(sorted(per_lang)) or 'none'}); drop them or set languages=null")
        per_lang = {k: per_lang[k] for k in spec.languages}
    if not any(per_lang.values()):
        raise SdqDataError(f"unlabeled data {spec.path or spec.dataset}: no rows; fill it or use unlabeled=none")
    counts = language_counts({k: len(v) for k, v in per_lang.items()}, spec.per_language, spec.sampling,
                             spec.temperature)
    out = {}
    for lang, rows in per_lang.items():
        keep = sorted(random.Random(f"{seed}/{lang}").sample(range(len(rows)), counts[lang]))
        out[lang] = [rows[i] for i in keep]
    return out
