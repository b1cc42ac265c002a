"""The one CPU probe of the int8 room: does this CPU multiply int8 bytes into int32 (VNNI)?

Every kernel decision that depends on the CPU asks :func:`cpu_has_vnni`:

- ``torch._int_mm`` runs oneDNN's int8 kernel only with AVX-512 VNNI; elsewhere it is a scalar loop, measured
  ~30x slower than the fp32 GEMM (4096 x 384 x 1536: 1.37 s vs 45 ms on a 2-core AMD EPYC without VNNI);
- without VNNI, the u8 x s8 kernels of oneDNN and onnxruntime add byte-pair products in int16
  (``vpmaddubsw``), which saturates on 8-bit weight codes: the ONNX export then loads its weights as uint8.

When it cannot tell, it answers False: every kernel chosen for "no VNNI" is exact on any CPU (only slower).

>>> fast_int_mm(torch.device("cpu"))     # True on AVX-512 VNNI CPUs, always on CUDA
"""

from __future__ import annotations

import functools

import numpy as np
import torch

S8_EXACT = 64  # |weight code| <= 64: u8 x s8 pair sums <= 2 * 255 * 64 = 32640 fit int16 (no saturation)


@functools.cache
def cpu_has_vnni() -> bool:
    """True on x86 CPUs with AVX-512 VNNI: torch's own probe (the one its oneDNN int8 kernels go by), else
    the Linux cpu flags; False when neither can tell. Asked once per process."""
    probe = getattr(torch.cpu, "_is_vnni_supported", None)  # private but stable since torch 2.1
    if probe is not None:
        return bool(probe())
    try:
        with open("/proc/cpuinfo") as f:
            return "avx512_vnni" in next(ln for ln in f if ln.startswith("flags")).split()
    except (OSError, StopIteration):
        return False


def fast_int_mm(device: torch.device) -> bool:
    """True where ``torch._int_mm`` runs a real int8 kernel: CUDA, or a CPU with AVX-512 VNNI."""
    return device.type != "cpu" or cpu_has_vnni()


def s8_exact(codes: torch.Tensor | np.ndarray) -> bool:
    """True when int8 weight ``codes`` are within [-64, 64]: exact on every u8 x s8 kernel, incl. the
    saturating ``vpmaddubsw`` of x86 CPUs without VNNI (e.g. 7-bit symmetric weights, [-64, 63])."""
    return -S8_EXACT <= int(codes.min()) and int(codes.max()) <= S8_EXACT  # (abs() of int8 -128 overflows)
