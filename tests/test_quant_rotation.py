"""Rotated per-token activations (quant.act.rotate, granularity=token): the Hadamard rotation against its
explicit matrix, the per-token quantizer against a hand-written reference, QuantLinear's product and folded
weight, GPTQ and bias correction on rotated layers and the config refusals (the export:
test_export_rotated.py)."""

from __future__ import annotations

import math

import pytest
import torch
from tiny import xlmr
from torch import nn

from sdq.calib import calibrate, correct_bias, gptq
from sdq.calib.calibrate import each_call
from sdq.calib.gptq_teacher import gptq_teacher
from sdq.errors import SdqConfigError
from sdq.quant import QuantConfig, QuantizerConfig, prepare, rotation
from sdq.quant.factory import make_quantizer
from sdq.quant.modules import QuantLinear
from sdq.quant.per_token import PerTokenQuantizer
from sdq.quant.rotation import _signs, paley12, rotate, supported

ROT8 = {"bits": 8, "symmetric": False, "granularity": "token", "rotate": True}


def sylvester(p: int) -> torch.Tensor:
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < p:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


@pytest.mark.parametrize("dense_max", [256, 4], ids=["H_p-dense", "H_p-split"])
@pytest.mark.parametrize("n", [1, 2, 16, 12, 48, 384])
def test_rotation_is_the_signed_hadamard_matrix(n, dense_max, monkeypatch):
    monkeypatch.setattr(rotation, "DENSE_MAX", dense_max)  # both ways of applying H_p
    m = 12 if n % 12 == 0 else 1
    h = torch.kron(paley12().double(), sylvester(n // 12)) if m == 12 else sylvester(n)  # (n, n), entries ±1
    ref = torch.diag(_signs(n, "cpu", torch.float64)) @ h.T / math.sqrt(n)  # rotate(x) = x @ ref
    x = torch.randn(3, 5, n, dtype=torch.float64)
    torch.testing.assert_close(rotate(x), x @ ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(rotate(rotate(x), inverse=True), x, rtol=0, atol=1e-12)
    torch.testing.assert_close(ref @ ref.T, torch.eye(n, dtype=torch.float64), rtol=0, atol=1e-12)


def test_paley_matrix_is_hadamard_and_unsupported_sizes_are_refused():
    h = paley12()
    assert set(h.unique().tolist()) == {-1.0, 1.0}
    torch.testing.assert_close(h @ h.T, 12 * torch.eye(12), rtol=0, atol=0)
    assert [n for n in (1, 8, 12, 24, 96, 100, 20, 36, 768, 3072) if supported(n)] == [1, 8, 12, 24, 96, 768, 3072]
    with pytest.raises(ValueError, match="2\\^k or 12"):
        rotate(torch.zeros(2, 20))


@pytest.mark.parametrize("symmetric", [False, True])
def test_per_token_quantizer_is_min_max_per_row(symmetric):
    q = make_quantizer(QuantizerConfig(bits=4, granularity="token", symmetric=symmetric), (6,), "act")
    assert isinstance(q, PerTokenQuantizer)
    x = torch.randn(2, 3, 6) * torch.tensor([1.0, 10.0, 0.1])[None, :, None]  # tokens of very different scale
    ref = torch.empty_like(x)
    for b in range(2):
        for t in range(3):
            v = x[b, t]
            if symmetric:
                s = v.abs().max() / 7
                ref[b, t] = torch.clamp(torch.round(v / s), -8, 7) * s
            else:
                lo, hi = min(v.min(), 0.0), max(v.max(), 0.0)
                s = (hi - lo) / 15
                z = torch.clamp(-torch.round(lo / s), 0, 15)
                ref[b, t] = (torch.clamp(torch.round(v / s) + z, 0, 15) - z) * s
    torch.testing.assert_close(q(x), ref, rtol=0, atol=1e-6)
    torch.testing.assert_close(q(x[:, 1:2]), ref[:, 1:2], rtol=0, atol=1e-6)  # a token's codes are its own
    x.requires_grad_(True)
    q(x).sum().backward()  # straight-through: min-max ranges never clip, so the gradient is 1 everywhere
    assert torch.equal(x.grad, torch.ones_like(x))


def test_rotated_linear_keeps_the_product_and_folds_back_to_the_input_basis():
    torch.manual_seed(0)
    lin = nn.Linear(24, 5)
    x = torch.randn(4, 7, 24)
    ref = lin(x).detach()
    w0 = lin.weight.detach().clone()
    q = QuantLinear.from_linear(lin, QuantizerConfig(bits=8, granularity="group", group_size=8),
                                QuantizerConfig(**ROT8))
    assert q.weight is lin.weight  # rotated in place: the same Parameter
    torch.testing.assert_close(q.weight.detach(), rotate(w0), rtol=0, atol=0)
    with torch.no_grad():
        y = q(x)
        for m in (q.weight_quantizer, q.act_quantizer):
            m.set_enabled(False)
        torch.testing.assert_close(q(x), ref, rtol=1e-5, atol=1e-5)  # quantizers off: the float layer
        q.act_quantizer.set_enabled(True)
        q.weight_quantizer.set_enabled(True)
        plain = q.to_linear()  # the fake-quantized weight, in x's own basis (activation quantization dropped)
        q.act_quantizer.set_enabled(False)
        torch.testing.assert_close(plain(x), q(x), rtol=1e-5, atol=1e-5)
    assert (y - ref).abs().max() > 1e-5  # 8-bit codes: a real (small) error
    assert (y - ref).abs().max() < 0.05 * ref.abs().max()


def test_unsupported_input_width_is_a_config_error():
    with pytest.raises(SdqConfigError, match="cannot be rotated"):
        QuantLinear.from_linear(nn.Linear(20, 4), QuantizerConfig(bits=8), QuantizerConfig(**ROT8))


@pytest.mark.parametrize("part, fields, match", [
    ("weight", {"bits": 8, "granularity": "token"}, "Linear inputs only"),
    ("embedding", {"bits": 8, "rotate": True}, "Linear inputs only"),
    ("act", {"bits": 8, "granularity": "token", "scheme": "lsq"}, "scheme=uniform"),
    ("act", {"bits": 8, "rotate": "yes"}, "true or false"),
])
def test_rotate_and_token_refused_where_they_do_not_apply(part, fields, match):
    with pytest.raises(SdqConfigError, match=match):
        QuantConfig.from_dict({part: fields}).validate()
    with pytest.raises(SdqConfigError, match="Linear inputs only"):
        QuantConfig.from_dict({"weight": {"bits": 8}, "overrides": {"query": {"rotate": True}}}).validate()


def rotated_student() -> tuple[nn.Module, list[dict]]:
    student = xlmr()
    prepare(student, QuantConfig.from_dict({"weight": {"bits": 4, "granularity": "group", "group_size": 8},
                                            "act": ROT8, "skip": ["classifier"]}))
    g = torch.Generator().manual_seed(1)
    data = [{"input_ids": torch.randint(3, 120, (4, 9), generator=g), "attention_mask": torch.ones(4, 9, dtype=torch.long)}
            for _ in range(3)]
    calibrate(student, data, len(data))
    return student, data


def test_gptq_and_bias_correction_work_in_the_rotated_basis():
    student, data = rotated_student()
    linears = {n: m for n, m in student.named_modules() if isinstance(m, QuantLinear) and m.rotated}
    assert len(linears) == 12  # 2 layers x (q, k, v, attn out, ffn in, ffn out); classifier FP
    before = {n: m.weight.detach().clone() for n, m in linears.items()}
    inputs = {n: [] for n in linears}  # what each weight multiplies: the rotated input after its quantizer
    each_call(student, data, linears, lambda n, m, x, out: inputs[n].append(m.act_quantizer(rotate(x))))
    rtn = {n: m.weight_quantizer(m.weight).detach() for n, m in linears.items()}
    assert gptq(student, data) == 12
    err = {"rtn": 0.0, "gptq": 0.0}
    for n, m in linears.items():
        x = torch.cat(inputs[n])  # (N, in)
        err["rtn"] += float(((before[n] - rtn[n]) @ x.T).pow(2).sum())
        err["gptq"] += float(((before[n] - m.weight.detach()) @ x.T).pow(2).sum())
    assert err["gptq"] < 0.8 * err["rtn"]  # GPTQ's H came from the rotated inputs, else it would not help
    name = "roberta.encoder.layer.0.attention.self.query"  # its input comes before every corrected bias
    lin, b0 = linears[name], linears[name].bias.detach().clone()
    assert correct_bias(student, data) == 12
    xs, outs = [], []
    each_call(student, data, {name: lin}, lambda n, m, x, out: (xs.append(x), outs.append(out)))
    x, out = torch.cat(xs), torch.cat(outs)  # (N, 32), (N, 32)
    with torch.no_grad():  # the defining property: the mean output of the float product (in x's own basis)
        float_out = x @ rotate(lin.weight, inverse=True).T + b0
        torch.testing.assert_close(out.mean(0), float_out.mean(0), rtol=0, atol=1e-5)
        assert (lin.bias - b0).abs().max() > 1e-4  # 4-bit weights, 8-bit inputs: a real shift corrected


def test_rotated_layer_never_takes_the_unrotated_int8_path():
    torch.manual_seed(0)
    q = QuantLinear.from_linear(nn.Linear(16, 4), QuantizerConfig(bits=8, granularity="channel"),
                                QuantizerConfig(bits=8, granularity="tensor", symmetric=False, rotate=True)).eval()
    x = torch.randn(3, 16)
    q(x)  # calibrate phase: the static input range
    for m in (q.weight_quantizer, q.act_quantizer):
        m.set_phase("frozen")
    with torch.no_grad():
        y = q(x)  # eval without grad: the int-domain path is taken only for unrotated layers
    torch.testing.assert_close(y, q(x).detach(), rtol=0, atol=1e-6)  # with grad: the fake-quant path


def test_towards_the_teacher_aims_at_its_weights_in_the_rotated_basis():
    student, data = rotated_student()
    teacher = xlmr()
    gptq_teacher(student, teacher, data, bias=True)
    t_mods = dict(teacher.named_modules())
    for name, mod in student.named_modules():
        if isinstance(mod, QuantLinear) and mod.rotated:
            w_t = t_mods[name].weight  # (out, in): the teacher's, in the input's own basis
            err = (mod.folded_weight() - w_t).norm() / w_t.norm()
            assert err < 0.2, (name, float(err))  # 4-bit codes in groups of 8: up to 0.15; aimed at the unrotated weight: 0.29
