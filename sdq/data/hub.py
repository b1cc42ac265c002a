"""Hugging Face hub source: ``datasets.load_dataset("microsoft/xglue", config)`` as reader dicts.

Offline, it fails fast (a 3 s connection probe) with one SdqDataError line telling the user to
pass ``data.root``.

>>> rows = read_hub_split("xnli", "de", "dev")   # same dicts as sdq.data.xglue.read_split
"""

from __future__ import annotations

import os
import socket
from typing import Any
from urllib.parse import urlparse

from sdq.data.tasks import HUB_CONFIGS, TaskSpec, get_task
from sdq.errors import SdqDataError

HUB_ID = "microsoft/xglue"
_SPLIT = {"train": "train", "dev": "validation", "test": "test"}
# hub column names: (text, text_pair parts, label) per config
_COLUMNS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "xnli": ("premise", ("hypothesis",), "label"),
    "pawsx": ("sentence1", ("sentence2",), "label"),
    "nc": ("news_title", ("news_body",), "news_category"),
    "qam": ("question", ("answer",), "label"),
    "qadsm": ("query", ("ad_title", "ad_description"), "relevance_label"),
    "wpr": ("query", ("web_page_title", "web_page_snippet"), "relavance_label"),  # sic
}
_UNREACHABLE = (
    "no local data.root given and the hub is unreachable: pass data.root=<xglue_full_dataset dir> "
    "(the official XGLUE download), or task=sib200 for the embedded offline task"
)


def hub_reachable(timeout: float = 3.0) -> bool:
    """True when the hub host answers a TCP connection within ``timeout`` seconds."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes") or \
            os.environ.get("HF_DATASETS_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def require_hub() -> None:
    """Raise the one-line SdqDataError when the hub cannot be reached."""
    if not hub_reachable():
        raise SdqDataError(_UNREACHABLE)


def _label_id(spec: TaskSpec, value: Any, names: list[str] | None) -> int:
    raw = names[value] if names is not None and isinstance(value, int) else str(value)
    idx = spec.label_id(raw)
    if idx is None:
        raise SdqDataError(f"{HUB_ID}/{HUB_CONFIGS[spec.name]}: label {raw!r} is not a {spec.name} label; "
                           f"pass data.root=<xglue_full_dataset dir> instead")
    return idx


def _names(ds: Any, column: str) -> list[str] | None:
    feat = ds.features[column]
    feat = getattr(feat, "feature", feat)  # Sequence(ClassLabel) -> ClassLabel
    return list(feat.names) if hasattr(feat, "names") else None


def convert_rows(spec: TaskSpec, ds: Any) -> list[dict]:
    """Map hub rows (a datasets.Dataset or list of dicts with ``features``) to reader dicts."""
    if spec.is_token_task:
        col = spec.name  # "ner" / "pos"
        names = _names(ds, col)
        return [{"tokens": list(r["words"]), "labels": [_label_id(spec, v, names) for v in r[col]]}
                for r in ds]
    text_col, pair_cols, label_col = _COLUMNS[spec.name]
    names = _names(ds, label_col)
    rows, queries = [], {}
    for r in ds:
        group = queries.setdefault(r[text_col], len(queries)) if spec.kind == "rank" else None
        rows.append({
            "text": r[text_col],
            "text_pair": " ".join(str(r[c]) for c in pair_cols).strip(),
            "label": _label_id(spec, r[label_col], names),
            "group": group,
        })
    return rows


def read_hub_split(task: str | TaskSpec, lang: str, split: str) -> list[dict]:
    """Examples of one language/split from the hub (train is English only)."""
    spec = task if isinstance(task, TaskSpec) else get_task(task)
    if spec.name not in HUB_CONFIGS:
        raise SdqDataError(f"task {spec.name} is not on the hub; pass data.root=<its data dir>")
    require_hub()
    import datasets

    hub_split = "train" if split == "train" else f"{_SPLIT[split]}.{lang}"
    try:
        ds = datasets.load_dataset(HUB_ID, HUB_CONFIGS[spec.name], split=hub_split)
    except Exception as e:  # noqa: BLE001 - any hub failure becomes one user-facing line
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise SdqDataError(f"{HUB_ID} ({HUB_CONFIGS[spec.name]}, {hub_split}) could not be loaded ({msg}); "
                           "pass data.root=<xglue_full_dataset dir> instead") from None
    return convert_rows(spec, ds)
