"""Metrics against hand-computed references (percent)."""

from __future__ import annotations

import math

import pytest
import torch

from sdq.data.metrics import compute_metric
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
