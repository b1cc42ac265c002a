"""sdq.int8.fused_codes: the compiled one-pass input quantization against the eager ops and a float64
reference (ties of both parities, out-of-range values, several shapes), and the fallback when it differs."""

import pytest
import torch

from sdq.int8 import fused_codes
from sdq.int8.fused_codes import compiled_codes, gemm_codes


def reference(x, inv, shift, lo, hi):
    """Float64 by hand: the fp32 product, round half to even, shift, clamp."""
    t = (x * inv).double()  # the fp32 product, exact in float64
    return torch.clamp(torch.round(t) + shift, lo, hi)


def needs_compiler():
    if compiled_codes() is None:
        pytest.skip("torch.compile (inductor) does not run here")


@pytest.mark.parametrize("shape", [(1, 1), (7, 33), (129, 384)])
@pytest.mark.parametrize("inv,shift,lo,hi,dtype", [(27.0, 117.0, 0.0, 255.0, torch.uint8),
                                                   (1 / 0.0371, -11.0, -128.0, 127.0, torch.int8),
                                                   (4.0, 0.0, 0.0, 15.0, torch.uint8)])
def test_compiled_codes_equal_eager_and_reference(shape, inv, shift, lo, hi, dtype):
    needs_compiler()
    inv = float(torch.tensor(inv, dtype=torch.float32))  # an fp32 value, as Int8Linear holds it
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(shape, generator=g) * 200 / inv
    flat = x.view(-1)
    n = min(flat.numel(), 40)
    flat[:n] = (torch.arange(n, dtype=torch.float32) - 20 + 0.5) / 4  # ties k + .5 where inv = 4
    flat[-1] = 1e30
    got = gemm_codes(x, inv, shift, lo, hi, dtype, compiled=True)
    eager = gemm_codes(x, inv, shift, lo, hi, dtype)
    assert got.dtype == dtype and torch.equal(got, eager)
    assert torch.equal(got.double(), reference(x, inv, shift, lo, hi))


def test_a_kernel_that_differs_is_not_used(monkeypatch):
    """The probe check: a compiled kernel off by one code is rejected with a warning (eager is used)."""
    def fake_compile(fn, dynamic=True):
        return lambda x, inv, shift, lo, hi, dtype: fn(x, inv, shift + 1, lo, hi, dtype)

    monkeypatch.setattr(torch, "compile", fake_compile)
    fused_codes.compiled_codes.cache_clear()
    try:
        with pytest.warns(UserWarning, match="differs from eager"):
            assert compiled_codes() is None
        x = torch.randn(3, 8)
        assert torch.equal(gemm_codes(x, 10.0, 5.0, 0.0, 255.0, torch.uint8, compiled=True),
                           gemm_codes(x, 10.0, 5.0, 0.0, 255.0, torch.uint8))
    finally:
        fused_codes.compiled_codes.cache_clear()


def test_a_compiler_failure_falls_back_to_eager(monkeypatch):
    def broken(fn, dynamic=True):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(torch, "compile", broken)
    fused_codes.compiled_codes.cache_clear()
    try:
        with pytest.warns(UserWarning, match="unavailable .RuntimeError: no C.. compiler found"):
            assert compiled_codes() is None
    finally:
        fused_codes.compiled_codes.cache_clear()
