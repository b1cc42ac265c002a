"""The int8 room: a quantized student's W8A8 Linears as real integer GEMMs, bit-identical to the student.

One call turns a QuantLinear (per-tensor uniform input, symmetric per-channel/tensor weight, <= 8 bits)
into an :class:`Int8Linear`; it picks an exact kernel for the device (:mod:`sdq.int8.kernels`): ``torch._int_mm``
(CUDA, CPUs with AVX-512 VNNI), oneDNN u8 x s8 with the epilogue fused (7-bit codes without VNNI),
onnxruntime u8 x u8 (8-bit codes without VNNI), or the codes in an fp32 GEMM. ``compiled=True`` quantizes the
input in one compiled pass (:mod:`sdq.int8.fused_codes`). The integer arithmetic itself is the student's
(:mod:`sdq.quant.intdomain`); the CPU is probed once (:mod:`sdq.int8.cpu`).

>>> from sdq.int8 import int8_linear, int8_kernel
>>> i8 = int8_linear(qlinear)                 # torch.equal(i8(x), qlinear.eval()(x)) under no_grad
>>> int8_kernel(torch.device("cpu"))          # "int_mm" | "onednn" | "ort" | "fp32"
"""

from sdq.int8.cpu import cpu_has_vnni, fast_int_mm, s8_exact
from sdq.int8.kernels import KERNELS, int8_kernel, int8_kernels, use_int8_kernel
from sdq.int8.linear import Int8Linear, int8_linear

__all__ = [
    "KERNELS",
    "Int8Linear",
    "cpu_has_vnni",
    "fast_int_mm",
    "int8_kernel",
    "int8_kernels",
    "int8_linear",
    "s8_exact",
    "use_int8_kernel",
]
