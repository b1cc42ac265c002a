"""What an export needs to know about the run behind a checkpoint: the label names, task kind and metric,
languages, base model and quant preset, and the run's ``results.json`` (student vs teacher per language)
when the checkpoint sits in a run dir (``<run>/checkpoints/<name>.ckpt``).

>>> ckpt = resolve_ckpt("outputs/sib200/me5_small/sdq-w8a8/2025-01-01_12-00-00")  # checkpoints/best.ckpt, else last
>>> info = run_info(ckpt)
>>> info.labels, info.kind, info.languages[:3], info.base_model
(('entertainment', ...), 'seq_cls', ['eng_Latn', ...], 'intfloat/multilingual-e5-small')
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from sdq.data.task_config import task_from_config
from sdq.errors import SdqError
from sdq.lit.restore import checkpoint_config
from sdq.models import EMBEDDED_ALIASES, HUB_ALIASES

CKPT_NAMES = ("best.ckpt", "last.ckpt")  # preference order inside <run>/checkpoints
EMBEDDED_HUB_ID = "intfloat/multilingual-e5-small"


@dataclass
class RunInfo:
    """The run facts an export dir records (config.json labels, model card)."""

    task: str
    kind: str  # seq_cls | pair_cls | token_cls | rank
    metric: str
    labels: tuple[str, ...]
    languages: list[str] = field(default_factory=list)
    model: str = ""  # model.name_or_path as the run typed it
    base_model: str | None = None  # hub id, when there is one
    quant: dict = field(default_factory=dict)  # the run's quant preset (name, weight/act/embedding bits)
    method: str = ""
    results: dict | None = None  # the run's results.json
    ckpt: str = ""


def resolve_ckpt(path: str | Path) -> Path:
    """A checkpoint file: ``path`` itself, or for a run dir ``<run>/checkpoints/best.ckpt``, else
    ``last.ckpt`` (SdqError when it holds neither)."""
    p = Path(path)
    if not p.is_dir():
        return p
    for d in (p / "checkpoints", p):
        for name in CKPT_NAMES:
            if (d / name).is_file():
                return d / name
    raise SdqError(f"run dir {p} holds no checkpoints/best.ckpt or checkpoints/last.ckpt; pass ckpt=<run dir> "
                   "of a finished run or ckpt=<file>.ckpt")


def run_labels(cfg: DictConfig, num_labels: int | None = None) -> tuple[str, ...]:
    """The label names of a run: the list its config stores (``task.labels``), else its task's."""
    stored = OmegaConf.select(cfg, "task.labels")
    if stored:
        return tuple(str(x) for x in stored)
    try:
        return tuple(task_from_config(cfg.task).labels) or tuple(f"LABEL_{i}" for i in range(int(num_labels or 0)))
    except SdqError:
        return tuple(f"LABEL_{i}" for i in range(int(num_labels or 0)))


def base_model_id(name: str) -> str | None:
    """The Hugging Face hub id of a backbone name, None for local dirs and random test models."""
    name = str(name)
    if name in EMBEDDED_ALIASES:
        return EMBEDDED_HUB_ID
    if name in HUB_ALIASES:
        return HUB_ALIASES[name]
    if name == "tiny" or "_random" in name or Path(name).expanduser().exists() or name.startswith((".", "/", "~")):
        return None
    return name if name.count("/") == 1 else None


def read_results(ckpt: Path) -> dict | None:
    """``<run>/results.json`` of ``<run>/checkpoints/x.ckpt`` (None when absent or unreadable)."""
    run = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    try:
        return json.loads((run / "results.json").read_text())
    except (OSError, ValueError):
        return None


def run_info(ckpt: str | Path, num_labels: int | None = None) -> RunInfo:
    """The :class:`RunInfo` of a checkpoint file (see the module doc)."""
    ckpt = Path(ckpt)
    cfg = checkpoint_config(ckpt)
    name = str(cfg.task.name)
    try:
        spec = task_from_config(cfg.task)
        kind, metric, languages = spec.kind, spec.metric, list(spec.languages)
    except SdqError:
        kind, metric, languages = "seq_cls", "acc", []
    kind = str(OmegaConf.select(cfg, "task.kind") or kind)
    metric = str(OmegaConf.select(cfg, "task.metric") or metric)
    results = read_results(ckpt)
    split = _split(results, name)
    if split:
        languages = [k for k in results[name][split] if k != "avg"]
    elif OmegaConf.select(cfg, "data.languages"):
        languages = [str(x) for x in cfg.data.languages]
    model = str(OmegaConf.select(cfg, "model.name_or_path") or "")
    quant = OmegaConf.to_container(cfg.quant, resolve=True) if OmegaConf.select(cfg, "quant") else {}
    return RunInfo(task=name, kind=kind, metric=metric, labels=run_labels(cfg, num_labels), languages=languages,
                   model=model, base_model=base_model_id(model), quant=quant,
                   method=str(OmegaConf.select(cfg, "method.name") or ""), results=results, ckpt=str(ckpt))


def _split(results: dict | None, task: str) -> str | None:
    """The split of results.json the model card reports: test, else dev."""
    per = (results or {}).get(task) or {}
    return next((s for s in ("test", "dev") if per.get(s)), None)
