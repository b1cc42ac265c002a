"""Which exact GEMM kernel :class:`~sdq.int8.Int8Linear` runs: all of them give the student's floats, bit for bit.

- ``int_mm``: ``torch._int_mm`` int8 x int8 -> int32, where it has a real kernel (CUDA, CPUs with AVX-512 VNNI);
- ``onednn``: torch's oneDNN u8 x s8 GEMM with the epilogue inside it, for weight codes within [-64, 64]
  (7-bit weights) on CPUs, preferred there to ``int_mm`` (:mod:`sdq.int8.onednn_gemm`);
- ``ort``: onnxruntime's u8 x u8 GEMM, for 8-bit weight codes on CPUs without VNNI (:mod:`sdq.int8.ort_gemm`);
- ``fp32``: the integer codes in an fp32 GEMM, the student's own eval arithmetic (any device).

>>> int8_kernel(torch.device("cpu"))        # "onednn" (7-bit codes), else "int_mm" with VNNI / "ort"
>>> with use_int8_kernel("fp32"):           # force one (tests, benchmarks)
...     y = model(**batch)
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch

from sdq.int8.cpu import fast_int_mm
from sdq.int8.onednn_gemm import onednn_available
from sdq.int8.ort_gemm import ort_available

KERNELS = ("int_mm", "onednn", "ort", "fp32")
_forced: list[str | None] = [None]


def int8_kernels(device: torch.device, s8_codes: bool = True) -> tuple[str, ...]:
    """The exact GEMM kernels :class:`~sdq.int8.Int8Linear` can run on ``device`` for weight codes within
    [-64, 64] (``s8_codes``) or wider ones, in the order it prefers them; only the forced one inside
    :func:`use_int8_kernel`."""
    return (_forced[0],) if _forced[0] is not None else _kernels_on(device.type, s8_codes)


def int8_kernel(device: torch.device) -> str:
    """Which GEMM :class:`~sdq.int8.Int8Linear` runs on ``device``: the first of :func:`int8_kernels` (layers
    whose 8-bit codes oneDNN would saturate skip it: ``int_mm`` with VNNI, else ``ort``, else ``fp32``)."""
    return int8_kernels(device)[0]


@functools.cache
def _kernels_on(device_type: str, s8_codes: bool) -> tuple[str, ...]:  # per call of every Int8Linear: cached
    found = ["int_mm"] if fast_int_mm(torch.device(device_type)) else []
    if device_type == "cpu" and s8_codes and onednn_available():  # first: with VNNI too, 1.8x int_mm's speed
        found.insert(0, "onednn")
    if ort_int_gemm(torch.device(device_type)):
        found.append("ort")
    return (*found, "fp32")


@contextlib.contextmanager
def use_int8_kernel(name: str) -> Iterator[None]:
    """Force one of :data:`KERNELS` inside the block (tests, benchmarks)::

        with use_int8_kernel("fp32"):
            y = model(**batch)
    """
    if name not in KERNELS:
        raise ValueError(f"unknown int8 kernel {name!r}; choose one of {KERNELS}")
    before, _forced[0] = _forced[0], name
    try:
        yield
    finally:
        _forced[0] = before


def ort_int_gemm(device: torch.device) -> bool:
    """True where :class:`~sdq.int8.Int8Linear` can run onnxruntime's exact integer GEMM
    (:mod:`sdq.int8.ort_gemm`): CPU tensors, onnxruntime installed."""
    return device.type == "cpu" and ort_available()
