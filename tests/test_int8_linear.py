"""Integer-domain W8A8 linear (sdq.quant.intdomain): the student's eval forward against a float64 integer
reference, its int8 export (sdq.int8.Int8Linear: torch._int_mm, oneDNN u8 x s8, onnxruntime u8 x u8, fp32 GEMM
of codes) bit-identical to it, and the cases that keep the fake-quant path."""

import numpy as np
import pytest
import torch

from sdq.int8 import (
    KERNELS,
    Int8Linear,
    fast_int_mm,
    fused_codes,
    int8_kernel,
    int8_kernels,
    s8_exact,
    use_int8_kernel,
)
from sdq.int8.onednn_gemm import OnednnIntGemm, onednn_available
from sdq.int8.ort_gemm import OrtIntGemm
from sdq.quant import QuantizerConfig, QuantLinear
from sdq.quant.intdomain import int_domain_linear, int_domain_ok, rescale

ACT = QuantizerConfig(bits=8, symmetric=False, granularity="tensor", observer="minmax")
WEIGHT = QuantizerConfig(bits=8, symmetric=True, granularity="channel")


def layer(k=48, n=40, act=ACT, weight=WEIGHT, bias=True, seed=0, calib_scale=3.0):
    torch.manual_seed(seed)
    lin = torch.nn.Linear(k, n, bias=bias)
    ql = QuantLinear.from_linear(lin, weight, act)
    ql.act_quantizer(torch.randn(64, k) * calib_scale + 0.5)  # calibrate the input range
    for q in (ql.act_quantizer, ql.weight_quantizer):
        q.set_phase("frozen")
    return ql.eval()


@pytest.fixture(params=KERNELS)
def kernel(request):
    """Every Int8Linear path on any machine: torch._int_mm (VNNI/CUDA), oneDNN u8 x s8 (7-bit codes; 8-bit
    ones fall back to onnxruntime), onnxruntime's GEMMs and the fp32 GEMM of the codes."""
    if request.param == "onednn" and not onednn_available():
        pytest.skip("torch's oneDNN int8 linear does not run exactly on this CPU/build")
    with use_int8_kernel(request.param):
        yield request.param


def reference(ql, x):
    """Float64 integer arithmetic by hand: codes, exact int sum, then the fp32 epilogue."""
    aq, wq = ql.act_quantizer, ql.weight_quantizer
    s_x, z = aq.scale.reshape(()), aq.zero_point.reshape(())
    qmin, qmax = aq.qrange()
    cx = torch.clamp(torch.round(x * (1.0 / s_x)) + z, qmin, qmax) - z  # (M, K)
    wmin, wmax = wq.qrange()
    cw = torch.clamp(torch.round(ql.weight * (1.0 / wq.scale)), wmin, wmax)  # (N, K)
    acc = (cx.double() @ cw.double().t()).float()  # exact integers
    comb = s_x * wq.scale.reshape(-1)
    return acc * comb if ql.bias is None else acc * comb + ql.bias  # two roundings, no FMA


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("weight", [WEIGHT, QuantizerConfig(bits=8, granularity="tensor"),
                                    QuantizerConfig(bits=7, granularity="channel"),
                                    QuantizerConfig(bits=4, granularity="channel")], ids=["w8ch", "w8t", "w7ch", "w4ch"])
@pytest.mark.parametrize("act", [ACT, QuantizerConfig(bits=8, symmetric=True, granularity="tensor"),
                                 QuantizerConfig(bits=4, symmetric=False, granularity="tensor")],
                         ids=["a8asym", "a8sym", "a4asym"])
def test_int_domain_forward_equals_integer_reference_and_int8_kernel(act, weight, bias, kernel):
    ql = layer(act=act, weight=weight, bias=bias)
    assert int_domain_ok(ql)
    x = torch.randn(2, 7, 48) * 4  # beyond the calibrated range too: clamped codes
    with torch.no_grad():
        y = ql(x)
        exact = reference(ql, x.reshape(-1, 48)).reshape(2, 7, 40)
        got = Int8Linear.from_quant_linear(ql)(x)
    assert torch.equal(y, exact)
    assert torch.equal(got, y)  # int8 x int8 -> int32 GEMM: the same floats
    with torch.enable_grad():  # training-style fake-quant forward: the same maths, other float rounding
        torch.testing.assert_close(ql(x), y, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bits", [8, 7])
def test_exact_rounding_ties_match(kernel, bits):
    ql = layer(weight=WEIGHT.replace(bits=bits))
    s, z = ql.act_quantizer.scale.reshape(()), ql.act_quantizer.zero_point.reshape(())
    k = torch.arange(-120, 120).float()
    x = ((k + 0.5) / (1.0 / s)).repeat(48, 1).t().contiguous()  # x * (1/s) lands on .5 exactly
    x[:, 1::2] = torch.nextafter(x[:, 1::2], x[:, 1::2] + 1)
    with torch.no_grad():
        assert torch.equal(Int8Linear.from_quant_linear(ql)(x), ql(x))
        assert torch.equal(ql(x), reference(ql, x))
    assert float(z) != 0


def test_fake_quant_path_kept_where_int8_does_not_apply():
    per_channel = layer(act=QuantizerConfig(bits=8, symmetric=False, granularity="channel"))
    calibrating = layer()
    calibrating.act_quantizer.set_phase("calibrate")
    asym_weight = layer(weight=QuantizerConfig(bits=8, symmetric=False, granularity="channel"))
    kmeans = layer(weight=QuantizerConfig(bits=4, scheme="kmeans", granularity="channel"))
    no_act = QuantLinear.from_linear(torch.nn.Linear(8, 4), WEIGHT, None).eval()
    for ql in (per_channel, calibrating, asym_weight, kmeans, no_act):
        assert not int_domain_ok(ql)
    ql = layer()
    ql.train()  # training mode: fake quant (gradients flow), eval + no grad: integer domain
    x = torch.randn(5, 48)
    y_train = ql(x)
    assert y_train.requires_grad
    with pytest.raises(ValueError, match="not int8-executable"):
        Int8Linear.from_quant_linear(per_channel)
    with torch.no_grad():
        assert torch.equal(int_domain_linear(ql, x), reference(ql, x))


def test_int8_linear_state_and_repr():
    ql = layer()
    i8 = Int8Linear.from_quant_linear(ql)
    assert i8.codes.dtype == torch.int8 and i8.codes.shape == (40, 48) and i8.comb.shape == (40,)
    assert int(i8.codes.abs().max()) <= 128 and "int8 x int8 -> int32" in repr(i8)
    assert fast_int_mm(torch.device("cuda")) and isinstance(fast_int_mm(torch.device("cpu")), bool)
    z = float(ql.act_quantizer.zero_point)
    torch.testing.assert_close(i8.corr, ((128 - z) * i8.codes.sum(1, dtype=torch.int32)).to(torch.int32))


def test_ort_gemm_exact_at_the_extremes():
    """u8 x u8 in onnxruntime: exact even where a u8 x s8 (vpmaddubsw) kernel saturates int16 pairs
    (255 * 127 * 2 > 32767), over the full int8 weight range, 8- and 4-bit inputs, every zero point tried."""
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(-128, 128, (96, 256), generator=g, dtype=torch.int8)
    codes[:8], codes[8:16] = 127, -128
    inv = 1.0 / 0.05
    x = torch.randn(33, 256, generator=g) * 8  # x * inv spans beyond every code range
    x[:4] = 1e4  # saturates at the top code
    for levels, a_zero in ((255, 0), (255, 37), (255, 128), (255, 255), (15, 3)):
        c = torch.clamp(torch.round(x * inv) + a_zero, 0, levels)  # codes - qmin, (33, 256)
        ref = (c.long() - a_zero) @ codes.long().t()  # (33, 96) int64
        got = OrtIntGemm(codes, inv, a_zero, levels)(x)
        assert got.dtype == torch.float32 and torch.equal(got.long(), ref) and ref.abs().max() > 32767
    with pytest.raises(ValueError, match="do not fit uint8"):
        OrtIntGemm(codes, inv, 256)


def test_ort_gemm_exact_at_the_largest_7bit_pair_sums():
    """Codes within [-64, 64] (7-bit weights, ``s8_exact``: the bound under which u8 x s8 kernels cannot
    saturate) at inputs 255 against weights -64/64, the largest pair sums: exact on onnxruntime's u8 x u8."""
    g = torch.Generator().manual_seed(1)
    codes = torch.where(torch.rand(64, 512, generator=g) < 0.5, -64, 64).to(torch.int8)  # (N, K)
    codes[:8], codes[8:16] = 64, -64
    codes[16:24] = torch.randint(-64, 64, (8, 512), generator=g, dtype=torch.int8)
    inv = 1.0 / 0.05
    x = torch.randn(40, 512, generator=g) * 8
    x[:6] = 1e4  # every input code at 255
    for levels, a_zero in ((255, 0), (255, 128), (255, 255), (15, 3)):
        gemm = OrtIntGemm(codes, inv, a_zero, levels)
        c = torch.clamp(torch.round(x * inv) + a_zero, 0, levels)  # (40, 512)
        ref = (c.long() - a_zero) @ codes.long().t()  # (40, 64) int64
        assert torch.equal(gemm(x).long(), ref)
    assert s8_exact(codes) and s8_exact(np.array([-64, 63], np.int8)) and not s8_exact(torch.tensor([-65, 0]))
    assert not s8_exact(torch.tensor([-128], dtype=torch.int8)) and not s8_exact(np.array([65]))


@pytest.mark.parametrize("kernel", ["onednn"], indirect=True)
def test_onednn_kernel_runs_7bit_codes_and_leaves_8bit_ones_to_onnxruntime(kernel):
    """oneDNN's u8 x s8 GEMM saturates int16 pair sums on 8-bit codes without VNNI, so only layers with codes
    within [-64, 64] use it; both layers stay bit-identical to the student; the packed weight is rebuilt when
    the codes change and left out of copies."""
    import copy

    w7, w8 = layer(weight=WEIGHT.replace(bits=7)), layer()
    i7, i8 = Int8Linear.from_quant_linear(w7), Int8Linear.from_quant_linear(w8)
    x = torch.randn(9, 48) * 4
    with torch.no_grad():
        assert torch.equal(i7(x), w7(x)) and torch.equal(i8(x), w8(x))
        assert isinstance(i7.__dict__["_dnnl"][1], OnednnIntGemm) and i8.__dict__["_dnnl"][1] is None
        assert "_ort" in i8.__dict__ and "_ort" not in i7.__dict__
        other = copy.deepcopy(w7)  # same input quantizer, other weight codes
        other.weight.mul_(-0.5)
        i7.load_state_dict(Int8Linear.from_quant_linear(other).state_dict())
        assert torch.equal(i7(x), other(x))
        assert "_dnnl" not in copy.deepcopy(i7).__dict__
    with pytest.raises(ValueError, match="within"):
        OnednnIntGemm(i8.codes, i8.comb)


def test_onednn_gemm_exact_at_the_largest_7bit_pair_sums():
    if not onednn_available():
        pytest.skip("torch's oneDNN int8 linear does not run exactly on this CPU/build")
    g = torch.Generator().manual_seed(2)
    codes = torch.where(torch.rand(48, 384, generator=g) < 0.5, -64, 64).to(torch.int8)  # (N, K)
    codes[:6] = -64
    a = torch.randint(0, 256, (33, 384), generator=g).to(torch.uint8)
    a[:5] = 255
    for z in (0, 1, 77, 255):
        assert torch.equal(OnednnIntGemm(codes, torch.ones(48))(a, z).long(), (a.long() - z) @ codes.long().t())


def test_kernel_choice():
    before = int8_kernel(torch.device("cpu"))
    with use_int8_kernel("fp32"):
        assert int8_kernel(torch.device("cpu")) == "fp32" and int8_kernels(torch.device("cpu")) == ("fp32",)
    assert int8_kernel(torch.device("cpu")) == before
    with pytest.raises(ValueError, match="unknown int8 kernel"), use_int8_kernel("vnni"):
        pass


def test_kernels_that_run_here():
    cpu = torch.device("cpu")  # onnxruntime is a dependency
    head = ("int_mm",) if fast_int_mm(cpu) else ()
    onednn = ("onednn",) if onednn_available() else ()  # first on any CPU where it runs (VNNI too: faster)
    assert int8_kernels(cpu, s8_codes=True) == (*onednn, *head, "ort", "fp32")
    assert int8_kernels(cpu, s8_codes=False) == (*head, "ort", "fp32")  # 8-bit codes: oneDNN would saturate
    assert int8_kernels(torch.device("cuda")) == ("int_mm", "fp32")


def test_auto_kernel_choice():
    cpu = torch.device("cpu")  # onnxruntime is a dependency
    expect = "onednn" if onednn_available() else "int_mm" if fast_int_mm(cpu) else "ort"
    assert int8_kernel(torch.device("cpu")) == expect and int8_kernel(torch.device("cuda")) == "int_mm"


@pytest.mark.parametrize("kernel", ["ort"], indirect=True)
def test_ort_kernel_follows_new_codes_and_copies(kernel):
    """The cached onnxruntime session is rebuilt when the codes change in place (load_state_dict) and is
    left out of deep copies (an InferenceSession cannot be copied)."""
    import copy

    a, b = layer(seed=0), layer(seed=1)
    ia, ib = Int8Linear.from_quant_linear(a), Int8Linear.from_quant_linear(b)
    x = torch.randn(6, 48)
    with torch.no_grad():
        assert torch.equal(ia(x), a(x)) and "_ort" in ia.__dict__
        twin = copy.deepcopy(ia)
        assert "_ort" not in twin.__dict__ and torch.equal(twin(x), a(x))
        ia.load_state_dict(ib.state_dict())  # codes, scales, bias
        ia.inv, ia.z = ib.inv, ib.z  # host constants: from the loader's config, not the state dict
        assert torch.equal(ia(x), b(x))


@pytest.mark.parametrize("shape", [(4096, 384, 1536), (37, 389, 3), (1, 64, 77)], ids=["ffn", "tails", "row"])
@pytest.mark.parametrize("bias", [True, False])
def test_onednn_fused_epilogue_equals_rescale(shape, bias):
    """oneDNN's epilogue inside the GEMM (acc * comb, then + bias, two roundings) gives rescale's floats."""
    if not onednn_available():
        pytest.skip("oneDNN's int8 epilogue differs from rescale here (or oneDNN int8 does not run)")
    m, k, n = shape
    g = torch.Generator().manual_seed(m)
    codes = torch.randint(-64, 65, (n, k), generator=g).to(torch.int8)
    a = torch.randint(0, 256, (m, k), generator=g).to(torch.uint8)
    comb = torch.rand(n, generator=g) * 1e-3 + 1e-6
    b = torch.randn(n, generator=g) if bias else None
    acc = ((a.long() - 117) @ codes.long().t()).float()  # (M, N) exact
    assert torch.equal(OnednnIntGemm(codes, comb, b)(a, 117), rescale(acc.clone(), comb, b))
    assert torch.equal(OnednnIntGemm(codes, torch.ones(n))(a, 117), acc)


@pytest.mark.parametrize("kernel", ["onednn"], indirect=True)
def test_onednn_kernel_is_left_out_where_its_check_fails(kernel, monkeypatch):
    """Where oneDNN's product or epilogue differs from the student's (its once-per-process check fails),
    Int8Linear does not use it: the layer runs onnxruntime's GEMM and stays bit-identical."""
    import sdq.int8.linear as lin

    ql = layer(weight=WEIGHT.replace(bits=7))
    x = torch.randn(9, 48) * 4
    with torch.no_grad():
        fast = Int8Linear.from_quant_linear(ql)
        assert torch.equal(fast(x), ql(x)) and isinstance(fast._onednn(), OnednnIntGemm)
        monkeypatch.setattr(lin, "onednn_available", lambda: False)
        plain = Int8Linear.from_quant_linear(ql)
        assert torch.equal(plain(x), ql(x)) and plain._onednn() is None and "_ort" in plain.__dict__


@pytest.mark.parametrize("kernel", ["int_mm", "onednn", "ort", "fp32"], indirect=True)
def test_compiled_input_codes_keep_every_kernel_exact(kernel, monkeypatch):
    """compiled=True: the int_mm and oneDNN kernels take their codes from the compiled kernel (counted), the
    others ignore it; every output stays the student's."""
    fn = fused_codes.compiled_codes()
    if fn is None:
        pytest.skip("torch.compile (inductor) does not run here")
    calls = []
    monkeypatch.setattr(fused_codes, "compiled_codes", lambda: lambda *a: calls.append(1) or fn(*a))
    ql = layer(weight=WEIGHT.replace(bits=7))
    i8 = Int8Linear.from_quant_linear(ql)
    i8.compiled = True
    assert "compiled input codes" in repr(i8)
    with torch.no_grad():
        for shape in ((9, 48), (2, 5, 48)):
            x = torch.randn(*shape) * 4
            assert torch.equal(i8(x), ql(x))
    assert len(calls) == (2 if kernel in ("int_mm", "onednn") else 0)
