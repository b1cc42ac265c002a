"""Reader for a local folder in the official ``xglue_full_dataset`` layout.

Sentence tasks give ``{"text", "text_pair", "label", "group"}``; token tasks ``{"tokens", "labels"}``.

>>> rows = read_split("/data/xglue_full_dataset", "xnli", "de", "dev")
>>> rows[0]["label"], available_languages("/data/xglue_full_dataset", "pos", "test")[:3]
(1, ['en', 'ar', 'bg'])
"""

from __future__ import annotations

from pathlib import Path

from sdq.data import sib200
from sdq.data.tasks import TaskSpec, get_task
from sdq.errors import SdqConfigError, SdqDataError

SPLITS = ("train", "dev", "test")
# Field count of each tab-separated line format (the label is always last).
_FIELDS = {"xnli": 3, "pawsx": 4, "nc": 3, "qam": 3, "qadsm": 4, "wpr": 4}


def split_path(root: str | Path, task: str | TaskSpec, lang: str, split: str) -> Path:
    """Where the official layout keeps one (task, language, split) file."""
    spec = task if isinstance(task, TaskSpec) else get_task(task)
    if split not in SPLITS:
        raise SdqConfigError(f"split {split!r} is unknown; use one of: {', '.join(SPLITS)}")
    if spec.name == "sib200":
        return sib200.split_file(root, lang, split)
    d = Path(root) / spec.dir_name
    if spec.name == "xnli":
        return d / ("multinli.train.en.tsv" if split == "train" else f"{lang}.{split}")
    if spec.name == "pawsx":
        return d / lang / ("train.tsv" if split == "train" else f"{split}_2k.tsv")
    if spec.kind == "token_cls":
        return d / f"{lang}.{split}"
    return d / f"xglue.{spec.dir_name.lower()}.{lang}.{split}"


def available_languages(root: str | Path, task: str | TaskSpec, split: str) -> list[str]:
    """The task's languages whose ``split`` file exists under ``root`` (official order; SIB-200: every
    language folder found, English first)."""
    spec = task if isinstance(task, TaskSpec) else get_task(task)
    if spec.name == "sib200":
        return sib200.discover_languages(root, split)
    langs = spec.languages
    if split == "train" and spec.name in ("xnli", "pawsx"):
        langs = ("en",)
    return [lang for lang in langs if split_path(root, spec, lang, split).is_file()]


def _open_lines(path: Path, spec: TaskSpec, lang: str, split: str) -> list[str]:
    if not path.is_file():
        raise SdqDataError(
            f"{path}: missing {spec.name}/{lang}/{split} file; point data.root at an xglue_full_dataset "
            f"folder that has {spec.dir_name}/, or pick languages that exist there"
        )
    text = path.read_text(encoding="utf-8-sig")
    if not text.strip():
        raise SdqDataError(f"{path}: file is empty; re-download or re-extract the {spec.dir_name} data")
    return text.splitlines()


def _bad(path: Path, lineno: int, what: str, fix: str) -> SdqDataError:
    return SdqDataError(f"{path}:{lineno}: {what}; {fix}")


def _label(spec: TaskSpec, raw: str, path: Path, lineno: int) -> int:
    idx = spec.label_id(raw)
    if idx is None:
        raise _bad(path, lineno, f"label {raw.strip()!r} is not a {spec.name} label",
                   f"fix the line (labels: {', '.join(spec.accepted_labels())})")
    return idx


def _read_sentences(path: Path, spec: TaskSpec, lines: list[str]) -> list[dict]:
    nfields = _FIELDS[spec.name]
    has_header = spec.name == "pawsx" or path.suffix == ".tsv"
    rows: list[dict] = []
    queries: dict[str, int] = {}
    for lineno, line in enumerate(lines, start=1):
        if has_header and lineno == 1:
            continue
        if not line.strip():
            continue
        f = line.rstrip("\r\n").split("\t")
        if len(f) != nfields:
            raise _bad(path, lineno, f"{len(f)} tab-separated fields, expected {nfields}",
                       f"fix or delete the line ({spec.name} lines are "
                       f"{nfields - 1} text fields then the label, separated by tabs)")
        label = _label(spec, f[-1], path, lineno)
        if spec.name == "pawsx":
            f = f[1:]  # drop the id column
        group = None
        if spec.name in ("qadsm", "wpr"):
            text, pair = f[0], f"{f[1]} {f[2]}".strip()
            if spec.name == "wpr":
                group = queries.setdefault(f[0], len(queries))
        else:
            text, pair = f[0], f[1]
        rows.append({"text": text, "text_pair": pair, "label": label, "group": group})
    if not rows:
        raise SdqDataError(f"{path}: no examples after the header; re-download the {spec.dir_name} data")
    return rows


def _read_tokens(path: Path, spec: TaskSpec, lines: list[str]) -> list[dict]:
    rows: list[dict] = []
    tokens: list[str] = []
    labels: list[int] = []
    for lineno, line in enumerate(lines, start=1):
        f = line.split()
        if not f or f[0] == "-DOCSTART-":
            if tokens:
                rows.append({"tokens": tokens, "labels": labels})
                tokens, labels = [], []
            continue
        if len(f) != 2:
            raise _bad(path, lineno, f"{len(f)} fields, expected 2 ('token TAG')",
                       "fix the line: one token and its tag separated by a space or tab, "
                       "a blank line between sentences")
        tokens.append(f[0])
        labels.append(_label(spec, f[1], path, lineno))
    if tokens:
        rows.append({"tokens": tokens, "labels": labels})
    return rows


def read_split(root: str | Path, task: str | TaskSpec, lang: str, split: str) -> list[dict]:
    """Examples of one language and split of a task read from the official layout under ``root``."""
    spec = task if isinstance(task, TaskSpec) else get_task(task)
    path = split_path(root, spec, lang, split)
    if spec.name == "sib200":
        return sib200.read_rows(path)
    lines = _open_lines(path, spec, lang, split)
    return _read_tokens(path, spec, lines) if spec.is_token_task else _read_sentences(path, spec, lines)
