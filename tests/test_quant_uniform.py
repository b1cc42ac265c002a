"""Uniform / LSQ quantizer vs small hand-written references (exact), gradients, observers, export codes."""

import math

import pytest
import torch

from sdq.quant import QuantizerConfig, UniformQuantizer, set_phase
from sdq.quant.functional import observe_percentile


def ref_row(x: torch.Tensor, bits: int, symmetric: bool, lo=None, hi=None) -> torch.Tensor:
    """Textbook affine fake quant of one group of values (loop-free but per group)."""
    lo = x.min() if lo is None else lo
    hi = x.max() if hi is None else hi
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        qmin = -qmax - 1
        s = torch.maximum(lo.abs(), hi.abs()) / qmax
        z = torch.tensor(0.0)
    else:
        qmin, qmax = 0, 2 ** bits - 1
        lo, hi = torch.clamp(lo, max=0.0), torch.clamp(hi, min=0.0)
        s = (hi - lo) / qmax
        z = torch.clamp(qmin - torch.round(lo / s), qmin, qmax)
    return (torch.clamp(torch.round(x * (1 / s)) + z, qmin, qmax) - z) * s  # reciprocal: as torch's kernels


def ref_grouped(w: torch.Tensor, bits: int, symmetric: bool, granularity: str, group_size=None):
    if granularity == "tensor":
        return ref_row(w, bits, symmetric)
    rows = w.reshape(-1, group_size) if granularity == "group" else w
    return torch.stack([ref_row(r, bits, symmetric) for r in rows]).reshape(w.shape)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("gran", ["tensor", "channel", "row", "group"])
def test_uniform_matches_reference_exactly(bits, symmetric, gran):
    torch.manual_seed(bits)
    w = torch.randn(6, 16) + (0.3 if not symmetric else 0.0)
    gs = 4 if gran == "group" else None
    q = UniformQuantizer(QuantizerConfig(bits=bits, symmetric=symmetric, granularity=gran, group_size=gs), w.shape)
    y = q(w)
    torch.testing.assert_close(y, ref_grouped(w, bits, symmetric, gran, gs), atol=0, rtol=0)
    levels = {len(torch.unique(r)) for r in (y.reshape(-1, gs) if gs else y.reshape(y.shape[0] if gran != "tensor"
                                                                                      else 1, -1))}
    assert max(levels) <= 2 ** bits


def test_activation_channel_is_last_dim_and_minmax_accumulates():
    torch.manual_seed(0)
    q = UniformQuantizer(QuantizerConfig(bits=8, symmetric=False, granularity="channel"), (5,), "act")
    a, b = torch.randn(3, 4, 5), torch.randn(2, 7, 5) * 3
    q(a)
    q(b)
    both = torch.cat([a.reshape(-1, 5), b.reshape(-1, 5)])
    torch.testing.assert_close(q.min_val[:, 0], both.amin(0), atol=0, rtol=0)
    torch.testing.assert_close(q.max_val[:, 0], both.amax(0), atol=0, rtol=0)
    set_phase(q, "frozen")
    x = torch.randn(2, 3, 5) * 4
    want = torch.stack([ref_row(x[..., c], 8, False, both[:, c].min(), both[:, c].max()) for c in range(5)], -1)
    torch.testing.assert_close(q(x), want, atol=0, rtol=0)


def test_ema_observer_running_average():
    q = UniformQuantizer(QuantizerConfig(bits=8, symmetric=False, observer="ema", ema_decay=0.75), (1,), "act")
    a, b = torch.tensor([[-1.0, 2.0]]), torch.tensor([[-3.0, 6.0]])
    q(a)
    q(b)
    assert q.min_val.item() == 0.75 * -1.0 + 0.25 * -3.0
    assert q.max_val.item() == 0.75 * 2.0 + 0.25 * 6.0


def test_percentile_observer_nearest_rank():
    x = torch.arange(1, 1001, dtype=torch.float32)[torch.randperm(1000)][None]
    lo, hi = observe_percentile(x, 99.0)
    assert (lo.item(), hi.item()) == (11.0, 990.0)  # ranks 11 and ceil(0.99 * 1000) = 990
    q = UniformQuantizer(QuantizerConfig(bits=8, symmetric=False, observer="percentile", percentile=99.0), (1,))
    q(x)
    assert (q.min_val.item(), q.max_val.item()) == (11.0, 990.0)


def test_mse_observer_clips_tails_and_beats_minmax():
    torch.manual_seed(0)
    w = torch.randn(4, 4096)  # Gaussian: the MSE-optimal 3-bit range is well inside [min, max]
    err = {}
    for obs in ("minmax", "mse"):
        q = UniformQuantizer(QuantizerConfig(bits=3, granularity="channel", observer=obs), w.shape)
        err[obs] = (q(w) - w).pow(2).sum(1)
    assert (err["mse"] < err["minmax"]).all()
    assert (q.max_val[:, 0] < w.abs().amax(1)).all()


def test_ste_gradient_is_clipped_identity():
    q = UniformQuantizer(QuantizerConfig(bits=4, symmetric=True), (1,), "act")
    q(torch.tensor([[-1.0, 1.0]]))  # range [-1, 1] -> scale 1/7, codes -8..7
    set_phase(q, "frozen")
    x = torch.tensor([-2.0, -1.1, -0.5, 0.0, 0.3, 1.0, 1.05, 3.0], requires_grad=True)
    q(x[None]).sum().backward()
    code = torch.round(x.detach() / (1.0 / 7))
    assert torch.equal(x.grad, ((code >= -8) & (code <= 7)).float())
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]


def test_lsq_gradient_matches_paper_formula():
    torch.manual_seed(0)
    w = torch.randn(3, 8)
    cfg = QuantizerConfig(bits=3, scheme="lsq", granularity="channel")
    q = UniformQuantizer(cfg, w.shape)
    q(w)
    set_phase(q, "learn")
    assert q.scale.requires_grad
    x = (w * 1.3).requires_grad_(True)  # some values outside the learned range
    q(x).sum().backward()
    s = q.scale.detach()
    qmin, qmax = -4.0, 3.0
    v = x.detach() * (1 / s)
    r = torch.round(v)
    ds = torch.where(r < qmin, qmin, torch.where(r > qmax, qmax, r - v))  # Esser et al. eq. 3
    g = 1.0 / math.sqrt(8 * qmax)
    torch.testing.assert_close(q.scale.grad, (ds * g).sum(1, keepdim=True), rtol=1e-5, atol=1e-6)
    inside = ((r >= qmin) & (r <= qmax)).float()
    torch.testing.assert_close(x.grad, inside, atol=0, rtol=0)


def test_lsq_learns_and_observer_frozen_in_learn_phase():
    w = torch.randn(4, 8)
    q = UniformQuantizer(QuantizerConfig(bits=4, scheme="lsq"), w.shape)
    q(w)
    s0 = q.scale.detach().clone()
    set_phase(q, "learn")
    q(w * 10)  # an observer would have rescaled
    assert torch.equal(q.scale.detach(), s0)


def test_one_bit_sign_and_ternary():
    w = torch.tensor([[0.5, -1.5, 2.0, -0.2]])
    q1 = UniformQuantizer(QuantizerConfig(bits=1, granularity="channel"), w.shape)
    a = w.abs().mean()
    assert torch.equal(q1(w), torch.tensor([[a, -a, a, -a]]))
    t = UniformQuantizer(QuantizerConfig(bits=2, narrow_range=True), w.shape)
    assert set(torch.unique(t(w) / t.scale).tolist()) <= {-1.0, 0.0, 1.0}


def test_per_row_bits_mixed_precision():
    torch.manual_seed(1)
    w = torch.randn(4, 32)
    q = UniformQuantizer(QuantizerConfig(bits=4, granularity="row"), w.shape)
    q.row_bits.copy_(torch.tensor([2, 4, 8, 3], dtype=torch.int8))
    y = q(w)
    for r, b in enumerate([2, 4, 8, 3]):
        torch.testing.assert_close(y[r], ref_row(w[r], b, True), atol=0, rtol=0)
    rows = torch.tensor([2, 0])
    torch.testing.assert_close(q(w[rows], rows=rows), y[rows], atol=0, rtol=0)


@pytest.mark.parametrize("cfg", [QuantizerConfig(bits=4, granularity="group", group_size=8),
                                 QuantizerConfig(bits=3, symmetric=False, granularity="channel"),
                                 QuantizerConfig(bits=1, granularity="row")])
def test_quantize_int_roundtrip(cfg):
    torch.manual_seed(2)
    w = torch.randn(5, 16)
    q = UniformQuantizer(cfg, w.shape)
    y = q(w)
    codes, params = q.quantize_int(w)
    assert codes.dtype == torch.int32 and codes.shape == w.shape
    assert int(codes.min()) >= int(params["qmin"].min()) and int(codes.max()) <= int(params["qmax"].max())
    torch.testing.assert_close(q.dequantize_int(codes, params), y, atol=0, rtol=0)


def test_disabled_is_identity_and_state_dict_restores():
    torch.manual_seed(3)
    cfg = QuantizerConfig(bits=6, symmetric=False, observer="ema", granularity="channel")
    q = UniformQuantizer(cfg, (4,), "act")
    for _ in range(3):
        q(torch.randn(2, 4))
    set_phase(q, "frozen")
    x = torch.randn(3, 4)
    q2 = UniformQuantizer(cfg, (4,), "act")
    q2.load_state_dict(q.state_dict())
    assert q2.phase_name == "frozen"
    assert torch.equal(q2(x), q(x))
    q.set_enabled(False)
    assert q(x) is x


@pytest.mark.parametrize("qmin,qmax", [(-128.0, 127.0), (0.0, 255.0), (-1.0, 1.0), (0.0, 1.0), (-8.0, 7.0)])
def test_fused_kernel_path_equals_composed_maths(qmin, qmax):
    """fake_quant's fused torch kernel and the composed ops give the same values and STE gradient,
    at exact rounding ties too, on a plain and on a transposed (activation) view."""
    from sdq.quant import functional as F

    torch.manual_seed(0)
    s = torch.rand(16, 1) * 0.1 + 1e-3
    z = torch.randint(int(qmin), int(qmax) + 1, (16, 1)).float()
    ties = (torch.randint(-300, 300, (16, 50)).float() + 0.5) * s
    act = (torch.randn(4, 10, 16) * 4).reshape(-1, 16).t()  # (C, N) view, as activations are grouped
    cols = (torch.randn(40, 16) * 4, s.t(), z.t())  # params per column: (N, C) activations, no transpose
    for x, s_, z_ in ((torch.randn(16, 50) * 4, s, z), (ties, s, z), (act, s, z), cols):
        x = x.detach().requires_grad_(True)
        fused, composed = F.fake_quant(x, s_, z_, qmin, qmax), F._FakeQuantSTE.apply(x, s_, z_, qmin, qmax)
        g1, = torch.autograd.grad(fused.sum() * 1.7, x)
        g2, = torch.autograd.grad(composed.sum() * 1.7, x)
        assert torch.equal(fused, composed) and torch.equal(g1, g2)
        assert 0 < int((g1 == 0).sum()) < g1.numel()  # values outside the range get no gradient


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_input_takes_the_fused_path_with_the_composed_numbers(dtype):
    """bf16/fp16 activations (autocast) with fp32 params: the composed ops promote to fp32; the fused
    path on x.float() gives the same fp32 values and the same (half-precision) gradient."""
    from sdq.quant import functional as F

    torch.manual_seed(0)
    s, z = torch.rand(1, 16) * 0.05 + 1e-3, torch.randint(0, 256, (1, 16)).float()
    x = (torch.randn(40, 16) * 4).to(dtype).requires_grad_(True)
    fused, composed = F.fake_quant(x, s, z, 0.0, 255.0), F._FakeQuantSTE.apply(x, s, z, 0.0, 255.0)
    assert fused.dtype == composed.dtype == torch.float32 and torch.equal(fused, composed)
    assert "FakeQuantizePerChannel" in type(fused.grad_fn).__name__  # torch's fused kernel ran
    g1, = torch.autograd.grad(fused.sum() * 1.7, x)
    g2, = torch.autograd.grad(composed.sum() * 1.7, x)
    assert g1.dtype == dtype and torch.equal(g1, g2) and 0 < int((g1 == 0).sum()) < g1.numel()


def test_fake_quant_without_grad_equals_the_fused_kernel_bit_for_bit():
    """The no-gradient path (evaluation) composes the maths from ops; it must give the fused kernel's numbers,
    ties (x / s exactly k + 0.5) and clipped values included, per row and per column."""
    from sdq.quant import functional as QF

    g = torch.Generator().manual_seed(0)
    for axis, shape in ((0, (6, 40)), (1, (40, 6))):
        n = shape[axis]
        scale = torch.rand(n, generator=g) * 0.1 + 0.01
        zp = torch.randint(-20, 20, (n,), generator=g)
        x = torch.randn(shape, generator=g) * 4
        ties = (torch.randint(-300, 300, shape, generator=g) + 0.5) * (scale[:, None] if axis == 0 else scale)
        x = torch.where(torch.rand(shape, generator=g) < 0.3, ties, x)
        s2d, z2d = (scale[:, None], zp[:, None]) if axis == 0 else (scale[None], zp[None])
        want = torch.fake_quantize_per_channel_affine(x, scale, zp.to(torch.int32), axis, -128, 127)
        with torch.no_grad():
            got = QF.fake_quant(x, s2d, z2d.float(), -128, 127)
        assert torch.equal(got, want)
        assert torch.equal(QF.fake_quant(x.requires_grad_(), s2d, z2d.float(), -128, 127).detach(), want)
