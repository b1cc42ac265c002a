"""Distillation losses against hand-written (python-loop / closed-form) references."""

import math

import pytest
import torch

from sdq.distill import (
    Capture,
    DistillLoss,
    attention_output_loss,
    attention_prob_kl,
    hidden_mse,
    logits_kl,
    task_loss,
)
from sdq.errors import SdqConfigError


def _softmax(xs):
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    return [v / sum(e) for v in e]


def _kl(p, q):
    return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q) if pi > 0)


def _rand(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


MASK = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])


def test_logits_kl_closed_form():
    # p_t = softmax([ln 3, 0]) = (3/4, 1/4), p_s = (1/2, 1/2); tau = 2 -> teacher logits doubled, x tau^2
    s = torch.zeros(1, 2, dtype=torch.float64)
    t = torch.tensor([[2 * math.log(3.0), 0.0]], dtype=torch.float64)
    want = 4 * (0.75 * math.log(1.5) + 0.25 * math.log(0.5))
    assert logits_kl(s, t, temperature=2.0).item() == pytest.approx(want, abs=1e-12)
    assert logits_kl(t, t, temperature=3.0).item() == 0.0


def test_logits_kl_sequence_batchmean():
    s, t, tau = _rand(3, 5, seed=1), _rand(3, 5, seed=2), 1.7
    ref = sum(_kl(_softmax((t[b] / tau).tolist()), _softmax((s[b] / tau).tolist())) for b in range(3)) / 3
    assert logits_kl(s, t, tau).item() == pytest.approx(ref * tau**2, abs=1e-9)


def test_logits_kl_tokens_masked():
    s, t, tau = _rand(2, 4, 3, seed=3), _rand(2, 4, 3, seed=4), 2.0
    vals = [_kl(_softmax((t[b, i] / tau).tolist()), _softmax((s[b, i] / tau).tolist()))
            for b in range(2) for i in range(4) if MASK[b, i]]
    assert logits_kl(s, t, tau, MASK).item() == pytest.approx(sum(vals) / len(vals) * tau**2, abs=1e-9)
    all_vals = [_kl(_softmax((t[b, i] / tau).tolist()), _softmax((s[b, i] / tau).tolist()))
                for b in range(2) for i in range(4)]
    assert logits_kl(s, t, tau).item() == pytest.approx(sum(all_vals) / 8 * tau**2, abs=1e-9)


def _ref_layer(s, t, kind):
    vals = []
    for b in range(s.shape[0]):
        for i in range(s.shape[1]):
            if not MASK[b, i]:
                continue
            a, c = s[b, i].tolist(), t[b, i].tolist()
            if kind == "mse":
                vals.append(sum((x - y) ** 2 for x, y in zip(a, c)) / len(a))
            elif kind == "kl":
                vals.append(_kl(_softmax(c), _softmax(a)))
            else:
                dot = sum(x * y for x, y in zip(a, c))
                vals.append(1 - dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in c)))
    return sum(vals) / len(vals)


@pytest.mark.parametrize("kind", ["mse", "kl", "cosine"])
def test_attention_output_loss(kind):
    s = [_rand(2, 4, 6, seed=10), _rand(2, 4, 6, seed=11)]
    t = [_rand(2, 4, 6, seed=12), _rand(2, 4, 6, seed=13)]
    ref = (_ref_layer(s[0], t[0], kind) + _ref_layer(s[1], t[1], kind)) / 2
    assert attention_output_loss(s, t, MASK, kind=kind).item() == pytest.approx(ref, abs=1e-9)
    # layer_map pairs student 0 with teacher 1 only
    got = attention_output_loss(s, t, MASK, kind=kind, layer_map=[(0, 1)]).item()
    assert got == pytest.approx(_ref_layer(s[0], t[1], kind), abs=1e-9)
    assert attention_output_loss(t, t, MASK, kind=kind).item() == pytest.approx(0.0, abs=1e-12)


def test_attention_output_loss_errors():
    s = [_rand(1, 4, 6)]
    with pytest.raises(SdqConfigError, match="layer_map"):
        attention_output_loss(s, s + s, MASK[:1])
    with pytest.raises(SdqConfigError, match="out of range"):
        attention_output_loss(s, s, MASK[:1], layer_map=[(0, 3)])
    with pytest.raises(SdqConfigError, match="unknown"):
        attention_output_loss(s, s, MASK[:1], kind="l1")


def test_hidden_mse_is_masked_mse():
    s, t = [_rand(2, 4, 6, seed=20)], [_rand(2, 4, 6, seed=21)]
    assert hidden_mse(s, t, MASK).item() == pytest.approx(_ref_layer(s[0], t[0], "mse"), abs=1e-9)


def _probs(seed, mask):
    scores = _rand(2, 2, 4, 4, seed=seed)
    scores = scores.masked_fill(~mask.bool()[:, None, None, :], float("-inf"))  # padded keys -> P = 0
    return scores.softmax(-1)


def test_attention_prob_kl():
    ps, pt = _probs(30, MASK), _probs(31, MASK)
    vals = []
    for b in range(2):
        for i in range(4):
            if MASK[b, i]:
                vals.append(sum(_kl(pt[b, h, i].tolist(), ps[b, h, i].tolist()) for h in range(2)) / 2)
    ref = sum(vals) / len(vals)
    assert attention_prob_kl(ps, pt, MASK).item() == pytest.approx(ref, abs=1e-9)
    # lists average over layers; identical maps give exactly 0 (zeros in padded keys included)
    assert attention_prob_kl([ps, pt], [pt, pt], MASK).item() == pytest.approx(ref / 2, abs=1e-9)
    assert attention_prob_kl(pt, pt, MASK).item() == 0.0
    # un-normalised (fake-quantized) rows are renormalised first
    assert attention_prob_kl(ps * 0.5, pt, MASK).item() == pytest.approx(ref, abs=1e-9)
    ps.requires_grad_(True)
    attention_prob_kl(ps, pt, MASK).backward()
    assert torch.isfinite(ps.grad).all()


def test_task_loss_ignores_minus_100():
    logits = _rand(2, 3, 4, seed=40)
    labels = torch.tensor([[1, -100, 3], [0, 2, -100]])
    ref = -sum(math.log(_softmax(logits[b, i].tolist())[labels[b, i]])
               for b in range(2) for i in range(3) if labels[b, i] != -100) / 4
    assert task_loss(logits, labels).item() == pytest.approx(ref, abs=1e-9)


def _caps():
    s = Capture(_rand(2, 4, 3, seed=50), [_rand(2, 4, 6, seed=51)], [_probs(52, MASK)], [_rand(2, 4, 6, seed=53)])
    t = Capture(_rand(2, 4, 3, seed=60), [_rand(2, 4, 6, seed=61)], [_probs(62, MASK)], [_rand(2, 4, 6, seed=63)])
    return s, t


def test_distill_loss_combines_parts():
    s, t = _caps()
    labels = torch.tensor([[1, 2, -100, -100], [0, -100, -100, -100]])
    crit = DistillLoss(ce=0.5, logits_kl=2.0, temperature=3.0, attn_out=1.5, attn_out_kind="cosine",
                       attn_prob=0.25, hidden=4.0)
    total, parts = crit(s, t, labels, MASK)
    want = {"ce": task_loss(s.logits, labels), "logits_kl": logits_kl(s.logits, t.logits, 3.0, MASK),
            "attn_out": attention_output_loss(s.attn_outs, t.attn_outs, MASK, "cosine"),
            "attn_prob": attention_prob_kl(s.attn_probs, t.attn_probs, MASK),
            "hidden": hidden_mse(s.hidden, t.hidden, MASK)}
    assert set(parts) == set(want)
    for k, value in want.items():
        assert parts[k].item() == value.item()
    ref = 0.5 * want["ce"] + 2.0 * want["logits_kl"] + 1.5 * want["attn_out"] + 0.25 * want["attn_prob"] \
        + 4.0 * want["hidden"]
    assert total.item() == pytest.approx(ref.item(), abs=1e-12)
    assert crit.needs == {"attn_out", "attn_prob", "hidden"}


def test_distill_loss_zero_weights_skip_and_need():
    s, t = _caps()
    crit = DistillLoss(ce=1.0, logits_kl=1.0, attn_out=1.0)
    assert crit.needs == {"attn_out"}
    assert crit.capture_kwargs == {"attn_out": True, "attn_prob": False, "hidden": False}
    t_empty = Capture(t.logits, t.attn_outs)  # no probs/hidden captured: not needed
    _, parts = crit(s, t_empty, torch.zeros(2, 4, dtype=torch.long), MASK)
    assert set(parts) == {"ce", "logits_kl", "attn_out"}
    with pytest.raises(SdqConfigError, match="attn_out=True"):
        crit(s, Capture(t.logits), None, MASK)
    with pytest.raises(SdqConfigError, match="no part"):
        DistillLoss(ce=0.0)(s, t, None, MASK)
    with pytest.raises(SdqConfigError, match="negative"):
        DistillLoss(hidden=-1.0)
    with pytest.raises(SdqConfigError, match="attn_prob='x' is not a number"):
        DistillLoss(attn_prob="x")
    with pytest.raises(SdqConfigError, match="temperature=None is not a number"):
        DistillLoss(temperature=None)
