"""Metrics against hand-computed references (percent)."""

from __future__ import annotations

import math
import random
from collections import defaultdict

import pytest
import torch

from sdq.data.metrics import accuracy, compute_metric, ndcg
from sdq.data.tasks import NER_TAGS
from sdq.errors import SdqConfigError

T = {t: i for i, t in enumerate(NER_TAGS)}


def test_accuracy():
    assert compute_metric("acc", [1, 0, 2, 2], [1, 1, 2, 0]) == 50.0
    assert compute_metric("acc", torch.tensor([3, 3]), torch.tensor([3, 1])) == 50.0
    # token accuracy over (B, T) with -100 ignored: 2 of 3 labelled tokens right
    assert compute_metric("acc", [[5, 1, 7]], [[5, -100, 0]]) == 50.0
    assert compute_metric("acc", [[5, 1, 7], [2, 2, 2]], [[5, -100, 0], [-100, 2, -100]]) == pytest.approx(
        200 / 3, abs=1e-12)


def _ids(tags: str) -> list[int]:
    return [T[t] for t in tags.split()]


def test_entity_f1_hand_example():
    # sentence 1 gold PER(0-1), LOC(3); pred PER(0-1), ORG(3)
    # sentence 2 gold ORG(0);           pred ORG(0), MISC(1)
    gold = [_ids("B-PER I-PER O B-LOC"), _ids("B-ORG O")]
    pred = [_ids("B-PER I-PER O B-ORG"), _ids("B-ORG B-MISC")]
    # correct 2, predicted 4, gold 3: P = 1/2, R = 2/3, F1 = 2PR/(P+R) = 4/7
    expected = 100 * 4 / 7
    assert compute_metric("f1", pred, gold, label_names=NER_TAGS) == pytest.approx(expected, abs=1e-12)
    # same sentences as a (B, T) tensor padded with -100 (what a token head produces)
    g = torch.full((2, 4), -100)
    p = torch.zeros((2, 4), dtype=torch.long)
    g[0], p[0] = torch.tensor(gold[0]), torch.tensor(pred[0])
    g[1, :2], p[1, :2] = torch.tensor(gold[1]), torch.tensor(pred[1])
    assert compute_metric("f1", p, g, label_names=NER_TAGS) == pytest.approx(expected, abs=1e-12)


def test_entity_f1_flat_is_one_sequence():
    # gold PER(0-1), LOC(2); pred PER(0), LOC(2): only LOC matches -> P = 1/2, R = 1/2, F1 = 1/2
    got = compute_metric("f1", _ids("B-PER O B-LOC"), _ids("B-PER I-PER B-LOC"), label_names=NER_TAGS)
    assert got == pytest.approx(50.0, abs=1e-12)
    with pytest.raises(SdqConfigError, match="label_names"):
        compute_metric("f1", [0], [0])


def test_ndcg_hand_example():
    scores = [0.9, 0.1, 0.5, 0.2, 0.3]
    labels = [0, 2, 1, 1, 0]
    groups = [7, 7, 7, 3, 3]
    # query 7: ranked relevances (0, 1, 2): DCG = 0 + 1/log2(3) + 3/log2(4); ideal (2, 1, 0): 3 + 1/log2(3)
    q7 = (1 / math.log2(3) + 3 / 2) / (3 + 1 / math.log2(3))
    # query 3: ranked (0, 1): DCG = 1/log2(3); ideal (1, 0): 1
    q3 = 1 / math.log2(3)
    got = compute_metric("ndcg", torch.tensor(scores), torch.tensor(labels), groups=torch.tensor(groups))
    assert got == pytest.approx(100 * (q7 + q3) / 2, abs=1e-12)


def test_ndcg_perfect_and_all_zero_groups():
    assert compute_metric("ndcg", [3.0, 2.0, 1.0], [4, 2, 0], groups=[0, 0, 0]) == 100.0
    assert compute_metric("ndcg", [1.0, 2.0], [0, 0], groups=[5, 5]) == 100.0  # nothing to rank


def test_unknown_metric():
    with pytest.raises(SdqConfigError, match="acc, f1, ndcg"):
        compute_metric("bleu", [0], [0])


def _ref_accuracy(preds: list[list[int]], labels: list[list[int]]) -> float:
    """The former hand formula: equal items over gold items that are not -100, in percent."""
    pairs = [(a, b) for ps, gs in zip(preds, labels) for a, b in zip(ps, gs) if b != -100]
    return 100.0 * sum(a == b for a, b in pairs) / len(pairs) if pairs else 0.0


def _ref_ndcg(scores: list[float], labels: list[int], groups: list[int], k: int | None = None) -> float:
    """The former hand formula: per-query nDCG(@k), gains 2^rel - 1, stable ranking, 0/0 -> 1, in percent."""
    def dcg(rels: list[float]) -> float:
        return sum((2.0 ** r - 1.0) / math.log2(i + 2) for i, r in enumerate(rels))

    by_q: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for s, r, q in zip(scores, labels, groups):
        by_q[q].append((float(s), float(r)))
    total = 0.0
    for items in by_q.values():
        best = dcg(sorted((r for _, r in items), reverse=True)[:k])
        total += dcg([r for _, r in sorted(items, key=lambda t: -t[0])][:k]) / best if best > 0 else 1.0
    return 100.0 * total / len(by_q)


def test_accuracy_equals_hand_reference_on_random_inputs():
    rng = random.Random(0)
    for _ in range(200):
        n_cls = rng.randint(1, 9)
        rows = [rng.randint(1, 7) for _ in range(rng.randint(1, 5))]
        labels = [[rng.choice([-100, *range(n_cls)]) for _ in range(n)] for n in rows]
        preds = [[rng.randrange(n_cls) for _ in range(n)] for n in rows]
        assert accuracy(preds, labels) == _ref_accuracy(preds, labels)  # ragged nested lists
        flat_p, flat_l = [a for r in preds for a in r], [b for r in labels for b in r]
        assert compute_metric("acc", torch.tensor(flat_p), torch.tensor(flat_l)) == _ref_accuracy([flat_p], [flat_l])
    # edge cases: all ignored, one item, one class only, predictions beyond the gold classes
    assert accuracy([[3, 4]], [[-100, -100]]) == 0.0 == _ref_accuracy([[3, 4]], [[-100, -100]])
    assert accuracy([7], [7]) == 100.0
    assert accuracy([0, 0, 0], [0, 0, 0]) == 100.0
    assert accuracy([9, 0, 0], [0, 0, 0]) == _ref_accuracy([[9, 0, 0]], [[0, 0, 0]]) == 200 / 3


def test_ndcg_equals_hand_reference_on_random_inputs():
    rng = random.Random(1)
    for _ in range(200):
        n = rng.randint(1, 30)
        groups = [rng.randrange(6) for _ in range(n)]
        labels = [rng.choice([0, 0, 1, 2, 3, 4]) for _ in range(n)]
        scores = [rng.choice([0.0, 0.25, 0.5, 1.0, rng.random()]) for _ in range(n)]  # many ties
        for k in (None, 1, 3):
            assert ndcg(scores, labels, groups, k=k) == _ref_ndcg(scores, labels, groups, k=k)
        got = compute_metric("ndcg", torch.tensor(scores), torch.tensor(labels), groups=torch.tensor(groups))
        assert got == _ref_ndcg(scores, labels, groups)
    # single-item query, all-equal scores (input order decides), zero relevance
    assert ndcg([0.3], [2], [0]) == 100.0 == ndcg([0.3], [0], [0])
    tied = ndcg([0.5, 0.5, 0.5], [0, 2, 1], [0, 0, 0])
    assert tied == _ref_ndcg([0.5, 0.5, 0.5], [0, 2, 1], [0, 0, 0])
    assert tied == pytest.approx(100 * (3 / math.log2(3) + 1 / 2) / (3 + 1 / math.log2(3)), abs=1e-12)
    assert ndcg([0.1, 0.9, 0.4], [0, 0, 0], [4, 4, 4]) == 100.0
    # one query fully irrelevant (counts 1), one inverted: mean of 1 and 1/(3 + 1/log2(3)) * (1 + 3/log2(3))
    mixed = ndcg([1.0, 2.0, 0.1, 0.9], [0, 0, 2, 1], [0, 0, 1, 1])
    assert mixed == pytest.approx(100 * (1 + (1 + 3 / math.log2(3)) / (3 + 1 / math.log2(3))) / 2, abs=1e-12)
