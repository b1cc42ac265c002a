"""The int8 backend's fusions (sdq.export.int8_fuse): Q/K/V as one GEMM and GELU in place give the same floats
as the unfused layers, on every int8 kernel, and the whole model stays the student."""

import pytest
import torch
from test_export import W8A8, batch, make_student
from torch import nn
from transformers.activations import GELUActivation

from sdq.export import export_quantized, load_quantized
from sdq.export.int8_fuse import SharedInput, SharedInputPart, fuse_int8, gelu_mode
from sdq.int8 import KERNELS, Int8Linear, fast_int_mm, use_int8_kernel

CPU_KERNELS = [k for k in KERNELS if k != "int_mm" or fast_int_mm(torch.device("cpu"))]


def int8_linear(n: int, k: int, seed: int, bits: int = 7, bias: bool = True, scale: float = 0.031,
                zero_point: float = 121.0) -> Int8Linear:
    g = torch.Generator().manual_seed(seed)
    top = 2 ** (bits - 1) - 1
    codes = torch.randint(-top, top + 1, (n, k), generator=g)
    codes[0, :4] = torch.tensor([-top, top, -top, top])  # the extremes are present
    w_scale = torch.rand(n, generator=g) * 1e-2 + 1e-3
    b = torch.randn(n, generator=g) if bias else None
    return Int8Linear(codes, w_scale, b, scale, zero_point, 0.0, 255.0)


def inputs(m: int, k: int, seed: int = 0) -> torch.Tensor:  # (2, m, k), values past the quantizer's range too
    return torch.randn(2, m, k, generator=torch.Generator().manual_seed(seed)) * 3


@pytest.mark.parametrize("kernel", CPU_KERNELS)
@pytest.mark.parametrize("bits,bias", [(7, True), (8, True), (7, False)])
def test_concat_equals_the_layers_side_by_side(kernel, bits, bias):
    layers = [int8_linear(n, 40, seed=i, bits=bits, bias=bias) for i, n in enumerate((24, 24, 16))]
    fused = Int8Linear.concat(layers)
    assert fused.out_features == 64 and fused.in_features == 40
    x = inputs(13, 40)
    with torch.no_grad(), use_int8_kernel(kernel):
        ref = torch.cat([m(x) for m in layers], -1)  # (2, 13, 64)
        assert torch.equal(fused(x), ref)


def test_concat_refuses_layers_that_quantize_their_input_differently():
    a, b = int8_linear(8, 16, 0), int8_linear(8, 16, 1)
    assert Int8Linear.concat([a, int8_linear(8, 16, 1, scale=0.032)]) is None  # another input scale
    assert Int8Linear.concat([a, int8_linear(8, 16, 1, zero_point=120.0)]) is None
    assert Int8Linear.concat([a, int8_linear(8, 16, 1, bias=False)]) is None  # a zero bias would add a rounding
    assert Int8Linear.concat([a, int8_linear(8, 12, 1)]) is None  # another input width
    assert Int8Linear.concat([a, b]) is not None


@pytest.mark.parametrize("kernel", CPU_KERNELS)
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_in_place_equals_torch_gelu_after_the_gemm(kernel, approximate):
    lin = int8_linear(48, 32, 3)
    x = inputs(9, 32)
    with torch.no_grad(), use_int8_kernel(kernel):
        ref = nn.functional.gelu(lin(x), approximate=approximate)
        lin.gelu = approximate
        assert torch.equal(lin(x), ref)
    assert f"gelu={approximate!r} in place" in repr(lin)


def test_gelu_mode_accepts_only_torchs_gelu():
    assert gelu_mode(nn.GELU()) == "none" and gelu_mode(nn.GELU(approximate="tanh")) == "tanh"
    assert gelu_mode(GELUActivation()) == "none"
    assert gelu_mode(GELUActivation(use_gelu_python=True)) is None  # its own erf formula, other floats
    assert gelu_mode(nn.ReLU()) is None


def test_shared_input_runs_one_gemm_per_input_tensor():
    layers = [int8_linear(8, 16, i) for i in range(3)]
    group = SharedInput(Int8Linear.concat(layers), [8, 8, 8])
    parts = [SharedInputPart(group, i) for i in range(3)]
    calls = []
    group.fused.register_forward_hook(lambda *_: calls.append(1))
    x, y = inputs(5, 16, 1), inputs(5, 16, 2)
    with torch.no_grad():
        out = [p(x) for p in parts]
        assert len(calls) == 1 and group._cache is None  # all three served: nothing held
        assert all(torch.equal(o, m(x)) for o, m in zip(out, layers))
        parts[0](x)
        assert torch.equal(parts[1](y), layers[1](y)) and len(calls) == 3  # another tensor: computed afresh
        parts[0](y)  # y's output is cached from the key's call
        assert len(calls) == 3
        parts[0](y)  # the same slot twice: computed again
        assert len(calls) == 4
        x2 = x.clone()
        parts[0](x2)
        x2.mul_(2)  # changed in place between the calls: not reused
        assert torch.equal(parts[1](x2), layers[1](x2)) and len(calls) == 6


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_fused_model_equals_the_student_and_the_unfused_export(tmp_path, attn):
    student = make_student({**W8A8, "weight": {"bits": 7, "granularity": "channel"}})
    student.set_attn_implementation(attn)
    export_quantized(student, tmp_path, onnx=False)
    fused, plain = load_quantized(tmp_path, backend="int8"), load_quantized(tmp_path, backend="int8", fuse=False)
    for m in (fused, plain):
        m.set_attn_implementation(attn)
    layer = fused.roberta.encoder.layer[0]
    assert type(layer.attention.self.query) is SharedInputPart and type(layer.intermediate.intermediate_act_fn) \
        is nn.Identity and layer.intermediate.dense.gelu == "none"
    assert type(plain.roberta.encoder.layer[0].attention.self.query) is Int8Linear
    with torch.no_grad():
        for s in range(3):
            b = batch(n=2 + s, t=7 + 4 * s, seed=30 + s)
            ref = student(**b).logits
            assert torch.equal(fused(**b).logits, ref) and torch.equal(plain(**b).logits, ref)


def test_qkv_with_different_input_scales_stay_three_gemms(tmp_path):
    student = make_student({**W8A8, "weight": {"bits": 7, "granularity": "channel"}})
    for layer in student.roberta.encoder.layer:  # as after QAT with learned steps: the key's scale moved
        layer.attention.self.key.act_quantizer.scale.data.mul_(1.05)
    export_quantized(student, tmp_path, onnx=False)
    exact = load_quantized(tmp_path, backend="int8", fuse=False)
    assert fuse_int8(exact) == (0, 2)  # GELU still moves into its GEMM
    assert type(exact.roberta.encoder.layer[0].attention.self.query) is Int8Linear
    with torch.no_grad():
        b = batch(seed=40)
        assert torch.equal(exact(**b).logits, student(**b).logits)
