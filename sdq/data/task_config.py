"""A task from its config section: built-in layouts (``format: xglue`` / a registered name) or own data.

``task.kind`` (seq_cls, pair_cls, token_cls, rank), ``task.metric``, ``task.labels`` (null: read from the
training data), ``task.label_aliases`` and, for own data, the source keys of :mod:`sdq.data.source`.

>>> spec = task_from_config(cfg.task)          # conf/task/xnli.yaml -> the registered xnli spec
>>> task_from_config({"name": "reviews", "kind": "seq_cls", "metric": "acc", "train": "t.csv",
...                   "eval": "{lang}.{split}.csv"}).source.format
'csv'
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from omegaconf import OmegaConf

from sdq.data.metrics import METRICS
from sdq.data.source import source_from_config
from sdq.data.tasks import KINDS, TaskSpec, get_task
from sdq.errors import SdqConfigError

BUILT_IN_FORMATS = ("xglue", "sib200")


def _plain(task: Any) -> dict:
    if OmegaConf.is_config(task):
        return OmegaConf.to_container(task, resolve=True)
    return dict(task)


def _labels(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, (str, int)) or not hasattr(value, "__iter__"):
        raise SdqConfigError(f"task.labels={value!r} must be a list of label names, e.g. [negative, positive]")
    labels = tuple(str(v) for v in value)
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise SdqConfigError(f"task.labels lists {', '.join(dup)} twice; name each label once")
    return labels


def _aliases(value: Any, labels: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    aliases = tuple((str(k), str(v)) for k, v in (value or {}).items())
    bad = [f"{k}: {v}" for k, v in aliases if labels and v not in labels]
    if bad:
        raise SdqConfigError(f"task.label_aliases {', '.join(bad)}: the target is not in task.labels "
                             f"({', '.join(labels)})")
    return aliases


def _kind_metric(task: dict, default_kind: str | None = None, default_metric: str | None = None) -> tuple[str, str]:
    kind, metric = task.get("kind", default_kind), task.get("metric", default_metric)
    if kind not in KINDS:
        raise SdqConfigError(f"task.kind={kind!r} is unknown; use one of: {', '.join(KINDS)}")
    if metric not in METRICS:
        raise SdqConfigError(f"task.metric={metric!r} is unknown; use one of: {', '.join(METRICS)}")
    return kind, metric


def task_from_config(task: Any) -> TaskSpec:
    """The :class:`TaskSpec` of a ``task`` config section (DictConfig or dict).

    No ``kind`` and no ``format`` (older configs, checkpoints): the registered task of ``task.name``.
    ``format: xglue`` / ``sib200``: the registered task, with the section's kind, metric, labels, aliases
    and languages. Otherwise the task's own data (``format`` csv / tsv / jsonl / conll / hf); its languages
    are those found in the data and ``labels`` may be empty (then read from the training data).
    """
    t = _plain(task)
    name = str(t.get("name") or "")
    if not name:
        raise SdqConfigError("task.name is empty; name the task (it names the results and the run dir)")
    fmt = t.get("format")
    if fmt is None and t.get("kind") is None:
        return get_task(name)
    if fmt in BUILT_IN_FORMATS:
        base = get_task(name)  # an unknown name lists the registered ones
        kind, metric = _kind_metric(t, base.kind, base.metric)
        labels = _labels(t.get("labels")) or base.labels
        langs = tuple(str(x) for x in t["languages"]) if t.get("languages") else base.languages
        aliases = _aliases(t["label_aliases"], labels) if "label_aliases" in t else base.aliases
        return replace(base, kind="seq_cls" if kind == "pair_cls" else kind, metric=metric, labels=labels,
                       aliases=aliases, languages=langs)
    kind, metric = _kind_metric(t, None, t.get("metric", "acc"))
    source = source_from_config(t, kind)
    labels = _labels(t.get("labels"))
    return TaskSpec(name, "seq_cls" if kind == "pair_cls" else kind, (), labels, metric, "",
                    aliases=_aliases(t.get("label_aliases"), labels), open_languages=True, source=source)
