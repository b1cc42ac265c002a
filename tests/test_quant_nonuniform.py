"""K-means and binary-code quantizers, their STE, error vs uniform, refit schedule and Quant-Noise."""

import pytest
import torch
from torch import nn

from sdq.quant import (
    BinaryCodeQuantizer,
    KMeansQuantizer,
    QuantizerConfig,
    QuantLinear,
    UniformQuantizer,
    quant_noise,
    set_phase,
)


def ref_lloyd(x: torch.Tensor, k: int, iters: int) -> torch.Tensor:
    """Plain per-value loop Lloyd with quantile init (reference for one group)."""
    xs = sorted(x.tolist())
    c = [xs[min(len(xs) - 1, int((i + 0.5) / k * len(xs)))] for i in range(k)]
    for _ in range(iters):
        buckets = [[] for _ in range(k)]
        for v in xs:
            buckets[min(range(k), key=lambda i: (abs(v - c[i]), i))].append(v)
        c = sorted(sum(b) / len(b) if b else c[i] for i, b in enumerate(buckets))
    return torch.tensor(c)


def test_kmeans_matches_loop_reference_and_is_nearest_centroid():
    torch.manual_seed(0)
    w = torch.randn(3, 64)
    q = KMeansQuantizer(QuantizerConfig(bits=2, scheme="kmeans", granularity="channel", kmeans_iters=30),
                        w.shape)
    y = q(w)
    for r in range(3):
        torch.testing.assert_close(q.codebook_[r], ref_lloyd(w[r], 4, 30), rtol=1e-5, atol=1e-6)
        dist = (w[r][:, None] - q.codebook_[r][None]).abs()  # (n, K)
        assert torch.equal(y[r], q.codebook_[r][dist.argmin(1)])
    assert torch.equal(q.codebook_, q.codebook_.sort(1).values)


def ref_weighted_lloyd(x: list, wt: list, k: int, iters: int) -> torch.Tensor:
    """Loop reference for weighted 1-D Lloyd: quantile init, nearest assignment, weighted means."""
    xs = sorted(range(len(x)), key=lambda i: x[i])
    c = [x[xs[min(len(x) - 1, int((i + 0.5) / k * len(x)))]] for i in range(k)]
    for _ in range(iters):
        num, den = [0.0] * k, [0.0] * k
        for v, a in zip(x, wt, strict=True):
            j = min(range(k), key=lambda i: (abs(v - c[i]), i))
            num[j] += a * v
            den[j] += a
        c = sorted(num[j] / den[j] if den[j] > 0 else c[j] for j in range(k))
    return torch.tensor(c)


def test_act_weighted_kmeans_matches_reference_and_lowers_output_error():
    """kmeans_weighting=act: centroids are the E[x_j^2]-weighted means of the calibration inputs, and
    the Linear's output error on those inputs is below plain k-means' when one input is an outlier."""
    torch.manual_seed(0)
    lin = nn.Linear(16, 4, bias=False)
    x = torch.randn(64, 16)
    x[:, 3] *= 30.0  # an outlier input feature (as in transformer hidden states)
    outs = {}
    for weighting in ("none", "act"):
        cfg = QuantizerConfig(bits=2, scheme="kmeans", granularity="channel", kmeans_iters=30,
                              kmeans_weighting=weighting)
        ql = QuantLinear.from_linear(lin, cfg)
        set_phase(ql, "calibrate")
        ql(x)
        set_phase(ql, "frozen")
        outs[weighting] = ql(x)
    q = ql.weight_quantizer
    imp = x.pow(2).mean(0)  # (C,)
    torch.testing.assert_close(q.in_sq / q.in_count, imp)
    for r in range(4):
        ref = ref_weighted_lloyd(lin.weight[r].tolist(), imp.tolist(), 4, 30)
        torch.testing.assert_close(q.codebook_[r], ref, rtol=1e-5, atol=1e-6)
    fp = lin(x)
    err = {k: (v - fp).pow(2).sum().item() for k, v in outs.items()}
    assert err["act"] < err["none"], err
    # the stats are kept in buffers (checkpoint) and frozen outside calibrate
    n = float(q.in_count)
    ql(x)
    assert float(q.in_count) == n and {"in_sq", "in_count"} <= set(q.state_dict())


def test_binary_code_structure_and_refinement():
    torch.manual_seed(0)
    w = torch.randn(4, 128)
    q = BinaryCodeQuantizer(QuantizerConfig(bits=2, scheme="binary", granularity="row"), w.shape)
    y = q(w)
    a = q.alpha  # (G, 2): every output is +-a1 +- a2
    for r in range(4):
        allowed = {round(s1 * a[r, 0].item() + s2 * a[r, 1].item(), 5) for s1 in (-1, 1) for s2 in (-1, 1)}
        assert {round(v, 5) for v in y[r].tolist()} <= allowed
    # greedy only (alpha1 = mean|w|, alpha2 = mean|residual|) is never better than the refined fit
    greedy = BinaryCodeQuantizer(QuantizerConfig(bits=2, scheme="binary", granularity="row", binary_iters=1),
                                 w.shape)
    greedy.alpha.copy_(_greedy_alpha(w, 2))
    set_phase(greedy, "frozen")
    greedy._mark_initialized()
    e_ref = (greedy(w) - w).pow(2).sum(1)
    e = (y - w).pow(2).sum(1)
    assert (e <= e_ref + 1e-6).all() and (e < e_ref).any()


def _greedy_alpha(w, bits):
    r, out = w.clone(), []
    for _ in range(bits):
        a = r.abs().mean(1, keepdim=True)
        out.append(a)
        r = r - a * torch.where(r >= 0, 1.0, -1.0)
    return torch.cat(out, 1)


@pytest.mark.parametrize("bits", [2, 3])
def test_nonuniform_error_below_uniform_on_gaussian(bits):
    torch.manual_seed(bits)
    w = torch.randn(8, 512)
    err = {}
    for scheme in ("uniform", "kmeans", "binary"):
        cfg = QuantizerConfig(bits=bits, scheme=scheme, granularity="channel")
        q = {"uniform": UniformQuantizer, "kmeans": KMeansQuantizer, "binary": BinaryCodeQuantizer}[scheme](
            cfg, w.shape)
        err[scheme] = (q(w) - w).pow(2).mean().item()
    assert err["kmeans"] < err["uniform"] and err["binary"] < err["uniform"]


@pytest.mark.parametrize("cls,scheme", [(KMeansQuantizer, "kmeans"), (BinaryCodeQuantizer, "binary")])
def test_ste_identity_gradient_and_int_roundtrip(cls, scheme):
    torch.manual_seed(0)
    w = torch.randn(4, 16, requires_grad=True)
    q = cls(QuantizerConfig(bits=3, scheme=scheme, granularity="group", group_size=8), (4, 16))
    y = q(w)
    (y * torch.arange(16.0)).sum().backward()
    assert torch.equal(w.grad, torch.arange(16.0).expand(4, 16))
    codes, params = q.quantize_int(w.detach())
    assert codes.shape == (4, 16) and int(codes.max()) < 8
    torch.testing.assert_close(q.dequantize_int(codes, params), y.detach(), atol=0, rtol=0)


def test_refit_only_in_calibrate_or_every_n_steps():
    torch.manual_seed(0)
    w = torch.randn(2, 32)
    q = KMeansQuantizer(QuantizerConfig(bits=2, scheme="kmeans", granularity="channel", refit_every=3), w.shape)
    q(w)
    set_phase(q, "frozen")
    q.train()
    cb = q.codebook_.clone()
    q(w * 2)  # step 1 -> 2: no refit (refit happens when step % 3 == 0 before the forward)
    assert torch.equal(q.codebook_, cb)
    q(w * 2)
    assert torch.equal(q.codebook_, cb)
    q(w * 2)  # step == 3 -> refit
    assert not torch.equal(q.codebook_, cb)
    q.eval()
    cb = q.codebook_.clone()
    for _ in range(4):
        q(w * 5)  # eval in frozen: never refit
    assert torch.equal(q.codebook_, cb)


def test_refit_schedule_survives_a_state_dict_round_trip():
    """The training-forward counter lives on the host (no GPU sync per forward) and is saved in ``step``."""
    torch.manual_seed(0)
    w = torch.randn(2, 32)
    cfg = QuantizerConfig(bits=2, scheme="kmeans", granularity="channel", refit_every=3)
    q = KMeansQuantizer(cfg, w.shape)
    q(w)
    set_phase(q, "frozen")
    q.train()
    for _ in range(3):
        q(w * 2)  # four training forwards in all (calibration counted); the one at step 3 refitted
    state = q.state_dict()
    assert int(state["step"]) == 4
    fresh = KMeansQuantizer(cfg, w.shape)
    fresh.load_state_dict(state)
    fresh.train()
    cb = fresh.codebook_.clone()
    fresh(w * 3)
    fresh(w * 3)  # steps 4 and 5: no refit, as in the uninterrupted run (a counter restarted at 0 would)
    assert torch.equal(fresh.codebook_, cb)
    fresh(w * 3)  # step 6: refit
    assert not torch.equal(fresh.codebook_, cb)


def test_quant_noise_fraction_and_eval_all_quantized():
    torch.manual_seed(0)
    w = torch.randn(64, 256)
    wq = w + 1.0  # every value differs
    mixed = quant_noise(w, wq, 0.3, 8)
    blocks = (mixed == wq).reshape(64, 32, 8)
    assert (blocks.all(-1) | (~blocks).all(-1)).all()  # whole blocks switch together
    frac = blocks.all(-1).float().mean().item()
    assert abs(frac - 0.3) < 0.03  # 2048 blocks: 5 sigma ~ 0.05

    lin = nn.Linear(16, 4)
    ql = QuantLinear.from_linear(lin, QuantizerConfig(bits=2, granularity="channel"), noise_p=0.5, noise_block=4)
    x = torch.randn(3, 16)
    ql.eval()
    full = ql(x)
    assert torch.equal(full, nn.functional.linear(x, ql.weight_quantizer(ql.weight), ql.bias))
    ql.train()
    outs = {tuple(ql(x).flatten().tolist()) for _ in range(6)}
    assert len(outs) > 1  # random block choice each step


def test_calibration_refits_a_weight_only_when_it_changed_or_uses_inputs(monkeypatch):
    """A per-tensor k-means embedding table is fitted once by prepare, not at every calibration batch;
    an in-place weight update (optimizer step, load) triggers a re-fit; activation-weighted k-means
    re-fits when its inputs doubled and once more on leaving the calibrate phase."""
    from sdq.quant import QuantEmbedding

    fits = []
    original = KMeansQuantizer._fit
    monkeypatch.setattr(KMeansQuantizer, "_fit", lambda self, x, g: fits.append(tuple(x.shape)) or original(self, x, g))
    torch.manual_seed(0)
    emb = QuantEmbedding.from_embedding(nn.Embedding(50, 8), QuantizerConfig(bits=2, scheme="kmeans"))
    assert fits == [(1, 400)]  # prepare's fit
    set_phase(emb, "calibrate")
    for _ in range(3):
        emb(torch.randint(0, 50, (2, 5)))
    assert fits == [(1, 400)]
    with torch.no_grad():
        emb.weight.mul_(2.0)
    emb(torch.randint(0, 50, (2, 5)))
    assert fits == [(1, 400)] * 2
    ql = QuantLinear.from_linear(nn.Linear(8, 4), QuantizerConfig(bits=2, scheme="kmeans", granularity="channel",
                                                                   kmeans_weighting="act"))
    set_phase(ql, "calibrate")
    fits.clear()
    for _ in range(3):
        ql(torch.randn(3, 8))
    assert fits == [(4, 8)] * 2 and float(ql.weight_quantizer.in_count) == 9  # after 3 and 6 inputs, not 9
    set_phase(ql, "frozen")  # the final fit on all 9
    assert fits == [(4, 8)] * 3 and ql.weight_quantizer._fitted_count == 9
