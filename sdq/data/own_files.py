"""Readers of a task's own files into records: CSV / TSV (a header line names the columns), JSONL (one
object per line) and CoNLL (``token ... TAG`` lines, a blank line between sentences).

A record is ``{"text", "text_pair", "label", "lang", "query", "where"}``: for token tasks ``text`` is the
token list and ``label`` the tag list; labels are raw strings (mapped to ids by :mod:`sdq.data.own_task`);
``where`` is ``file:line`` for error messages.

>>> recs = read_records(Path("reviews/train.csv"), "csv", Columns(text="review", label="stars"), False, "en")
>>> recs[0]["text"], recs[0]["label"], recs[0]["where"]
('Great phone', '5', 'reviews/train.csv:2')
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from sdq.data.source import Columns
from sdq.errors import SdqDataError


def needed_columns(columns: Columns) -> list[tuple[str, str]]:
    """(config key, column name) pairs a row must have."""
    out = [("text", columns.text), ("label", columns.label)]
    out += [("text_pair", c) for c in columns.text_pair]
    out += [(key, c) for key, c in (("language", columns.language), ("query", columns.query)) if c is not None]
    return out


def missing_column(where: str, key: str, column: str, found: list[str]) -> SdqDataError:
    return SdqDataError(f"{where}: no column {column!r} (task.columns.{key}); columns found: "
                        f"{', '.join(map(str, found)) or 'none'}; set task.columns.{key}=<one of them> or fix the file")


def _text(value: Any, where: str, what: str) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise SdqDataError(f"{where}: empty {what}; fill it in or delete the row")
    if isinstance(value, (list, dict)):
        raise SdqDataError(f"{where}: {what} is a {type(value).__name__}, expected a string")
    return str(value)


def _tokens(value: Any, where: str, what: str) -> list[str]:
    if not isinstance(value, (list, tuple)) or not value:
        raise SdqDataError(f"{where}: {what} must be a non-empty list (token tasks: one token list and one "
                           "tag list per row)")
    return [str(v) for v in value]


def record(row: dict, columns: Columns, token_task: bool, lang: str, where: str) -> dict:
    """One record from a row dict (CSV row, JSON object or ``datasets`` row); label values raw."""
    if columns.language is not None:
        lang = _text(row[columns.language], where, f"language (column {columns.language!r})").strip()
    if token_task:
        tokens = _tokens(row[columns.text], where, f"column {columns.text!r}")
        tags = _tokens(row[columns.label], where, f"column {columns.label!r}")
        if len(tokens) != len(tags):
            raise SdqDataError(f"{where}: {len(tokens)} tokens but {len(tags)} tags; give one tag per token")
        return {"text": tokens, "text_pair": None, "label": tags, "lang": lang, "query": None, "where": where}
    pair = None
    if columns.text_pair:
        pair = " ".join(_text(row[c], where, f"column {c!r}") for c in columns.text_pair)
    query = _text(row[columns.query], where, f"query (column {columns.query!r})") if columns.query else None
    label = row[columns.label]
    label = _text(label if not isinstance(label, bool) else int(label), where, f"label (column {columns.label!r})")
    return {"text": _text(row[columns.text], where, f"text (column {columns.text!r})"), "text_pair": pair,
            "label": label.strip(), "lang": lang, "query": query, "where": where}


def _read_text(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise SdqDataError(f"{path}: file not found; check task.train / task.eval") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SdqDataError(f"{path}: unreadable ({type(e).__name__}); save it as UTF-8 text") from None
    if not text.strip():
        raise SdqDataError(f"{path}: file is empty; it needs a header line and examples")
    return text


def _read_table(path: Path, text: str, delimiter: str, columns: Columns, token_task: bool, lang: str) -> list[dict]:
    reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
    header = list(reader.fieldnames or [])
    for key, col in needed_columns(columns):
        if col not in header:
            raise missing_column(str(path), key, col, header)
    sep = "comma" if delimiter == "," else "tab"
    out = []
    for row in reader:
        where = f"{path}:{reader.line_num}"
        if not any((v or "").strip() for k, v in row.items() if k is not None):
            continue
        if None in row or None in row.values():
            n = len(header) + len(row.get(None) or []) - sum(v is None for v in row.values())
            raise SdqDataError(f"{where}: {n} {sep}-separated fields, the header has {len(header)}; fix or delete "
                               "the line (quote fields that hold the separator)")
        out.append(record(row, columns, token_task, lang, where))
    return out


def _read_jsonl(path: Path, text: str, columns: Columns, token_task: bool, lang: str) -> list[dict]:
    out = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise SdqDataError(f"{where}: not a JSON object ({e.msg}); one object per line") from None
        if not isinstance(row, dict):
            raise SdqDataError(f"{where}: a JSON {type(row).__name__}, expected an object per line")
        for key, col in needed_columns(columns):
            if col not in row:
                raise missing_column(where, key, col, list(row))
        out.append(record(row, columns, token_task, lang, where))
    return out


def _read_conll(path: Path, text: str, lang: str) -> list[dict]:
    out: list[dict] = []
    tokens: list[str] = []
    tags: list[str] = []
    start = 0
    for lineno, line in enumerate(text.splitlines() + [""], start=1):
        f = line.split()
        if not f or f[0] == "-DOCSTART-":
            if tokens:
                out.append({"text": tokens, "text_pair": None, "label": tags, "lang": lang, "query": None,
                            "where": f"{path}:{start}"})
                tokens, tags = [], []
            continue
        if len(f) < 2:
            raise SdqDataError(f"{path}:{lineno}: 1 field, expected a token and its tag ('token TAG'); fix the line "
                               "(a blank line between sentences)")
        start = start if tokens else lineno
        tokens.append(f[0])
        tags.append(f[-1])
    return out


def read_records(path: Path, fmt: str, columns: Columns, token_task: bool, lang: str) -> list[dict]:
    """Every record of one file (``lang``: the language of rows without a language column)."""
    text = _read_text(path)
    if fmt in ("csv", "tsv"):
        recs = _read_table(path, text, "," if fmt == "csv" else "\t", columns, token_task, lang)
    elif fmt == "jsonl":
        recs = _read_jsonl(path, text, columns, token_task, lang)
    else:
        recs = _read_conll(path, text, lang)
    if not recs:
        raise SdqDataError(f"{path}: no examples; it needs examples after the header")
    return recs
