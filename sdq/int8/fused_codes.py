"""The input codes of an integer GEMM in one pass: ``clamp(round(x * inv) + shift, lo, hi)`` as (u)int8.

The formula is the student's own (:func:`sdq.quant.intdomain.shifted_codes`); this module compiles it.

In eager torch these are five passes over the (M, K) input (mul, round, add, clamp, cast) and an fp32
temporary as large as the input. ``torch.compile`` (inductor) fuses them into one loop that writes the bytes
directly. The ops are elementwise and exactly rounded (the fp32 product, round half to even, an integer
add, a clamp), so the compiled kernel gives the same codes; that is checked once per process, at rounding
ties and out-of-range values, before it is used. Compiling needs a C++ compiler and takes ~20 s on first
use (inductor caches it on disk), so it is opt-in: ``load_quantized(dir, backend="int8", compile=True)``.

>>> a = gemm_codes(x2, inv, shift, lo, hi, torch.uint8)                  # eager, five passes
>>> a = gemm_codes(x2, inv, shift, lo, hi, torch.uint8, compiled=True)   # one pass (inductor)
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable

import torch

from sdq.quant.intdomain import Scalar
from sdq.quant.intdomain import shifted_codes as _codes  # the student's formula, eager


def gemm_codes(x: torch.Tensor, inv: Scalar, shift: Scalar, lo: float, hi: float, dtype: torch.dtype,
               compiled: bool = False) -> torch.Tensor:
    """``clamp(round(x * inv) + shift, lo, hi)`` (x fp32, ``inv`` exactly an fp32 value; python floats or 0-dim
    tensors) as ``dtype``, with the fused kernel when ``compiled`` and it passed its check here (else eager, the
    same codes)."""
    fn = compiled_codes() if compiled else None
    return (fn or _codes)(x, inv, shift, lo, hi, dtype)


def _probe() -> list[tuple]:
    """Inputs where a kernel could go wrong: exact .5 ties (both parities), out-of-range values, odd shapes."""
    g = torch.Generator().manual_seed(0)
    s = 0.0371
    inv = float(1.0 / torch.tensor(s))
    x = torch.randn(37, 389, generator=g) * 40 * s
    ties = torch.arange(-300, 300, dtype=torch.float32) + 0.5  # x * inv lands on k + .5
    x.view(-1)[: ties.numel()] = ties / inv
    x[-1, :4] = torch.tensor([1e30, -1e30, 1e6, -1e6])
    return [(x, inv, 117.0, 0.0, 255.0, torch.uint8), (x[:5, :64], inv, -11.0, -128.0, 127.0, torch.int8),
            (ties.reshape(2, -1), 1.0, 0.0, 0.0, 255.0, torch.uint8), (ties.reshape(3, -1) / 4, 4.0, 3.0, 0.0, 255.0,
                                                                          torch.uint8)]


@functools.cache
def compiled_codes() -> Callable | None:
    """The inductor kernel of :func:`gemm_codes` when it compiles here and equals eager on the probe;
    else None with a warning (eager is used)."""
    try:
        fn = torch.compile(_codes, dynamic=True)
        same = all(torch.equal(fn(*args), _codes(*args)) for args in _probe())
    except Exception as exc:  # noqa: BLE001 - no compiler, inductor errors: fall back to eager
        warnings.warn(f"sdq: compiled input quantization unavailable ({type(exc).__name__}: "
                      f"{str(exc).splitlines()[0][:160] if str(exc) else ''}); using eager torch", stacklevel=2)
        return None
    if not same:
        warnings.warn("sdq: compiled input quantization differs from eager on its probe; using eager torch",
                      stacklevel=2)
        return None
    return fn
