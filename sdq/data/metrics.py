"""XGLUE metrics, in percent: accuracy, entity-level F1 (seqeval) and per-query nDCG.

>>> compute_metric("acc", [1, 0, 1], [1, 1, 1])                                  # 66.67
>>> compute_metric("f1", [[1, 2, 0]], [[1, 2, 0]], label_names=NER_TAGS)          # 100.0
>>> compute_metric("ndcg", [0.9, 0.1, 0.5], [2, 0, 1], groups=[0, 0, 0])          # 100.0
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from sdq.errors import SdqConfigError

METRICS = ("acc", "f1", "ndcg")
IGNORE = -100


def _to_list(x: Any) -> list:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return list(x)


def _sequences(preds: Any, labels: Any) -> tuple[list[list[int]], list[list[int]]]:
    """Per-sentence (pred, gold) id lists, dropping positions whose gold label is -100.

    Accepts nested lists / 2-D arrays (one row per sentence, -100 padding) or flat 1-D
    sequences (treated as ONE sentence: entities may then join across sentence ends).
    """
    p, g = _to_list(preds), _to_list(labels)
    if len(p) != len(g):
        raise SdqConfigError(f"f1: {len(p)} predictions for {len(g)} labels; pass one per token")
    if g and not isinstance(g[0], (list, tuple)):
        p, g = [p], [g]
    out_p, out_g = [], []
    for ps, gs in zip(p, g):
        keep = [(int(a), int(b)) for a, b in zip(ps, gs) if int(b) != IGNORE]
        out_p.append([a for a, _ in keep])
        out_g.append([b for _, b in keep])
    return out_p, out_g


def entity_f1(preds: Any, labels: Any, label_names: Sequence[str]) -> float:
    """Entity-level micro F1 (CoNLL, via seqeval) over BIO tag ids, in percent."""
    from seqeval.metrics import f1_score

    p, g = _sequences(preds, labels)
    names = list(label_names)
    p_tags = [[names[i] for i in s] for s in p]
    g_tags = [[names[i] for i in s] for s in g]
    return 100.0 * float(f1_score(g_tags, p_tags, zero_division=0))


def accuracy(preds: Any, labels: Any) -> float:
    """Share of equal items, in percent; gold -100 positions are ignored (nested input is flattened).

    Counts come from torchmetrics' micro stat scores; the ratio is taken in float64 (its
    ``multiclass_accuracy`` divides in float32).

    >>> accuracy([[5, 1, 7]], [[5, -100, 0]])                                     # 50.0
    """
    from torchmetrics.functional.classification import multiclass_stat_scores

    p, g = _sequences(preds, labels)
    flat_p = torch.tensor([a for s in p for a in s], dtype=torch.long)
    flat_g = torch.tensor([b for s in g for b in s], dtype=torch.long)
    if not flat_g.numel():
        return 0.0
    num_classes = max(2, int(torch.maximum(flat_p.max(), flat_g.max())) + 1)
    tp, _, _, _, support = multiclass_stat_scores(flat_p, flat_g, num_classes, average="micro").tolist()
    return 100.0 * tp / support


def dcg(relevances: Sequence[float]) -> float:
    """Discounted cumulative gain with gains 2^rel - 1 and log2(rank + 1) discounts."""
    return sum((2.0 ** r - 1.0) / math.log2(i + 2) for i, r in enumerate(relevances))


def ndcg(scores: Any, labels: Any, groups: Any, k: int | None = None) -> float:
    """Mean over query groups of nDCG(@k), in percent. Groups whose ideal DCG is 0 count as 1.

    Items of a group are ranked by descending score (ties kept in input order).
    By hand: torchmetrics' retrieval nDCG averages ties, has linear gains, float32, 0 for no-gain.

    >>> ndcg([0.9, 0.1, 0.5, 0.2], [2, 0, 1, 1], groups=[0, 0, 0, 1], k=2)        # 100.0
    """
    s, g, q = _to_list(scores), _to_list(labels), _to_list(groups)
    if not (len(s) == len(g) == len(q)):
        raise SdqConfigError(f"ndcg: {len(s)} scores, {len(g)} labels and {len(q)} groups must match")
    by_group: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for sc, rel, grp in zip(s, g, q):
        by_group[int(grp)].append((float(sc), float(rel)))
    if not by_group:
        return 0.0
    total = 0.0
    for items in by_group.values():
        ranked = [rel for _, rel in sorted(items, key=lambda t: -t[0])][:k]
        ideal = sorted((rel for _, rel in items), reverse=True)[:k]
        best = dcg(ideal)
        total += dcg(ranked) / best if best > 0 else 1.0
    return 100.0 * total / len(by_group)


def compute_metric(
    metric: str,
    preds: Any,
    labels: Any,
    groups: Any | None = None,
    label_names: Sequence[str] | None = None,
) -> float:
    """A task metric in percent. ``acc``: ids; ``f1``: BIO ids + ``label_names``;
    ``ndcg``: relevance scores + query ``groups`` (None -> all items form one query)."""
    if metric == "acc":
        return accuracy(preds, labels)
    if metric == "f1":
        if label_names is None:
            raise SdqConfigError("metric f1 needs label_names (the task's BIO tags) to build entities")
        return entity_f1(preds, labels, label_names)
    if metric == "ndcg":
        if groups is None:
            groups = [0] * len(_to_list(labels))
        return ndcg(preds, labels, groups)
    raise SdqConfigError(f"metric {metric!r} is unknown; use one of: {', '.join(METRICS)}")
