"""Integer-domain W8A8 linear: what an int8 GEMM computes, in the student and in its export, bit for bit.

A :class:`~sdq.quant.QuantLinear` whose input is quantized per tensor (uniform, <= 8 bits) and whose weight
is uniform symmetric per channel/tensor (<= 8 bits) evaluates (eval mode, no grad) with the scales
factored out of the sum, as integer hardware does::

    y = (c_x @ c_w^T) * (s_x * s_w) + b,   c_x = clamp(round(x * (1/s_x)) + z, qmin, qmax) - z,
                                            c_w = clamp(round(w * (1/s_w)), wmin, wmax)

``c_x @ c_w^T`` is an integer, exact in fp32 while |partial sums| < 2^24, so the student's eval forward
(:func:`int_domain_linear`, fp32 matmul of codes) and :class:`Int8Linear` (``torch._int_mm`` int8 x int8
-> int32; on CPUs without VNNI oneDNN's u8 x s8 for 7-bit weight codes or onnxruntime's exact integer
GEMMs: :func:`int8_kernel`) produce
identical floats: the exported model is provably the student. Mathematically it is the
fake-quantized product ``fq(x) @ fq(w)^T + b``; only float rounding differs from the training forward.

>>> if int_domain_ok(qlinear):                  # per-tensor activations, uniform symmetric weights
...     y = int_domain_linear(qlinear, x)       # what the student's eval forward does
>>> i8 = Int8Linear.from_quant_linear(qlinear)  # int8 codes + scales; i8(x) == y exactly
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch
from torch import nn

from sdq.quant.fused_codes import gemm_codes
from sdq.quant.onednn_gemm import (
    OnednnIntGemm,
    onednn_available,
    onednn_exact_on,
    onednn_full_range,
    onednn_fused_epilogue,
)
from sdq.quant.ort_gemm import OrtIntGemm, ort_available
from sdq.quant.uniform import UniformQuantizer


def int_domain_ok(layer: nn.Module) -> bool:
    """True when ``layer`` (a QuantLinear) runs as an int8 GEMM: see the module doc for the conditions."""
    aq, wq = getattr(layer, "act_quantizer", None), getattr(layer, "weight_quantizer", None)
    if not (isinstance(aq, UniformQuantizer) and isinstance(wq, UniformQuantizer)):
        return False
    if not (aq._enabled and wq._enabled and aq._initialized and wq._initialized):
        return False
    if aq._phase == 0 or wq._phase == 0 or aq.sign_mode or wq.sign_mode:  # calibrating: observers must see x
        return False
    return (aq.cfg.granularity == "tensor" and aq.cfg.bits <= 8 and wq.cfg.bits <= 8 and wq.cfg.symmetric
            and wq.cfg.granularity in ("channel", "tensor") and wq.rows_uniform()
            and layer.weight.dtype == torch.float32)


def fast_int_mm(device: torch.device) -> bool:
    """True where ``torch._int_mm`` runs a real int8 kernel: CUDA, or a CPU with AVX-512 VNNI (oneDNN).
    Elsewhere (e.g. AVX2-only x86) torch falls back to a scalar loop, measured ~30x slower than the
    fp32 GEMM (4096 x 384 x 1536: 1.37 s vs 45 ms on a 2-core AMD EPYC without VNNI)."""
    return device.type != "cpu" or _cpu_has_fast_int_mm()


KERNELS = ("int_mm", "onednn", "ort", "fp32")
_forced: list[str | None] = [None]


def int8_kernels(device: torch.device, s8_codes: bool = True) -> tuple[str, ...]:
    """The exact GEMM kernels :class:`Int8Linear` can run on ``device``, all giving the same floats, the one it
    runs first (:func:`int8_kernel`): ``int_mm`` (``torch._int_mm``: CUDA, CPU with VNNI), ``onednn`` (torch's
    oneDNN u8 x s8, CPU: weight codes within [-64, 64] (``s8_codes``), or any int8 codes with VNNI), ``ort``
    (onnxruntime, CPU), ``fp32`` (the codes in an fp32 GEMM, the student's own eval arithmetic). Only the forced
    one inside :func:`use_int8_kernel`."""
    return (_forced[0],) if _forced[0] is not None else _kernels_on(device.type, s8_codes)


def int8_kernel(device: torch.device) -> str:
    """Which GEMM :class:`Int8Linear` runs on ``device``: the first of :func:`int8_kernels` (layers whose 8-bit
    codes oneDNN would saturate run ``ort`` instead, else ``fp32``)."""
    return int8_kernels(device)[0]


@functools.cache
def _kernels_on(device_type: str, s8_codes: bool) -> tuple[str, ...]:  # per call of every Int8Linear: cached
    found = ["int_mm"] if fast_int_mm(torch.device(device_type)) else []
    if device_type == "cpu" and onednn_available() and (s8_codes or onednn_full_range()):
        found.append("onednn")
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
    """True where :class:`Int8Linear` without a fast ``torch._int_mm`` runs onnxruntime's exact integer GEMM
    (:mod:`sdq.quant.ort_gemm`): CPU tensors, onnxruntime installed."""
    return device.type == "cpu" and ort_available()


@functools.cache
def _cpu_has_fast_int_mm() -> bool:  # asked once per process, not per Linear per forward
    probe = getattr(torch.cpu, "_is_vnni_supported", None)  # private but stable since torch 2.1
    return bool(probe()) if probe is not None else True


def input_codes(x2: torch.Tensor, inv, z, qmin: float, qmax: float) -> torch.Tensor:
    """``clamp(round(x * (1/s)) + z, qmin, qmax) - z``, integer-valued fp32 (M, K): one definition for the
    student's eval forward and :class:`Int8Linear`'s fp32-GEMM path (``inv``/``z`` tensors or floats); the
    same ops as the int8 kernels' codes (:func:`~sdq.quant.fused_codes.gemm_codes` with shift ``z``)."""
    return gemm_codes(x2, inv, z, qmin, qmax, x2.dtype).sub_(z)


def act_consts(aq: UniformQuantizer) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """(1/s_x, z, qmin, qmax) of a per-tensor activation quantizer (0-dim tensors: no host sync); 1/s_x as
    the fake-quant kernel computes it."""
    qmin, qmax = aq.qrange()
    return 1.0 / aq.scale.detach().reshape(()), aq.zero_point.reshape(()), float(qmin), float(qmax)


def combined_scale(act_scale: torch.Tensor, w_scale: torch.Tensor, out_features: int) -> torch.Tensor:
    """s_x * s_w per output feature (N,), fp32: one definition for the student and :class:`Int8Linear`."""
    return (act_scale.reshape(()) * w_scale.reshape(-1)).expand(out_features).contiguous()


def rescale(acc: torch.Tensor, comb: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The float epilogue shared by student and export: ``acc * comb + bias`` (acc (M, N) fp32 integers),
    written into ``acc`` (no new (M, N) buffer), rounded after the product and after the sum (no fused
    multiply-add), as oneDNN's int8 linear does it inside its GEMM (:mod:`sdq.quant.onednn_gemm`)."""
    acc.mul_(comb)
    return acc if bias is None else acc.add_(bias)


def int_domain_linear(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The student's eval forward of an int-domain QuantLinear: (..., K) -> (..., N)."""
    aq, wq = layer.act_quantizer, layer.weight_quantizer
    inv, z, qmin, qmax = act_consts(aq)
    x2 = x.reshape(-1, x.shape[-1])  # (M, K)
    cx = input_codes(x2, inv, z, qmin, qmax)  # (M, K) integer-valued
    cw = wq.quantize_int(layer.weight)[0].to(cx.dtype)  # (N, K) the export's codes
    acc = torch.nn.functional.linear(cx, cw)  # (M, N) exact integers in fp32
    bias = None if layer.bias is None else layer.bias.detach()
    y = rescale(acc, combined_scale(aq.scale.detach(), wq.scale.detach(), layer.out_features), bias)
    return y.reshape(*x.shape[:-1], layer.out_features)


class Int8Linear(nn.Module):
    """Linear on int8 weight codes with a static per-tensor input quantizer, int8 x int8 -> int32 GEMM.

    Buffers: ``codes`` (N, K) int8, ``comb`` (N,) s_x * s_w, ``corr`` (N,) int32 = (m - z) * sum_k codes
    (the GEMM runs on c - m with m the middle of the input range, so that codes fit int8), ``bias``.
    """

    def __init__(self, codes: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None,
                 act_scale: float, act_zero_point: float, act_qmin: float, act_qmax: float):
        super().__init__()
        n, k = codes.shape
        self.in_features, self.out_features = int(k), int(n)
        s_x = torch.tensor(act_scale, dtype=torch.float32)
        self.inv = float(1.0 / s_x)  # the fake-quant kernel's reciprocal, exactly representable as a double
        self.z, self.qmin, self.qmax = float(act_zero_point), float(act_qmin), float(act_qmax)
        self.compiled = False  # True: the input codes in one torch.compile'd pass (exact; int_mm/onednn kernels)
        self.gelu: str | None = None  # "none" / "tanh": torch's GELU on the output, in place (sdq.export.int8_fuse)
        self.mid = float((int(act_qmin) + int(act_qmax) + 1) // 2)  # [0, 255] -> 128: c - 128 fits int8
        self.register_buffer("codes", codes.to(torch.int8).contiguous())
        self.register_buffer("comb", combined_scale(s_x, w_scale.float(), n))
        wsum = self.codes.sum(1, dtype=torch.int32)
        self.register_buffer("corr", (int(self.mid - self.z) * wsum).to(torch.int32))
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())

    @classmethod
    def from_quant_linear(cls, layer: nn.Module) -> Int8Linear:
        """From a QuantLinear that :func:`int_domain_ok` accepts."""
        if not int_domain_ok(layer):
            raise ValueError(f"{type(layer).__name__} is not int8-executable (needs per-tensor uniform input "
                             "quantization and uniform symmetric per-channel/tensor weights, <= 8 bits, fp32)")
        aq, wq = layer.act_quantizer, layer.weight_quantizer
        qmin, qmax = aq.qrange()
        return cls(wq.quantize_int(layer.weight)[0], wq.scale.detach(), layer.bias, float(aq.scale.reshape(())),
                   float(aq.zero_point.reshape(())), qmin, qmax)

    @classmethod
    def concat(cls, layers: list[Int8Linear]) -> Int8Linear | None:
        """One Int8Linear over the rows of ``layers`` (e.g. Q/K/V) when they quantize their input alike and all or
        none have a bias, else None: each output element is the same integer sum and the same epilogue, so
        ``concat(ls)(x)`` equals ``cat([l(x) for l in ls], -1)`` bit for bit."""
        first = layers[0]
        same = ("in_features", "inv", "z", "qmin", "qmax", "compiled", "gelu")
        if any(getattr(m, a) != getattr(first, a) for m in layers for a in same) or \
                len({m.bias is None for m in layers}) != 1:
            return None
        fused = cls.__new__(cls)
        nn.Module.__init__(fused)
        fused.__dict__.update({a: getattr(first, a) for a in (*same, "mid")})
        fused.out_features = sum(m.out_features for m in layers)
        for name in ("codes", "comb", "corr", "bias"):
            parts = [getattr(m, name) for m in layers]
            fused.register_buffer(name, None if parts[0] is None else torch.cat(parts).contiguous())
        return fused

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., K) -> (..., N)
        y = self._forward_2d(x.reshape(-1, self.in_features))  # (M, N), a fresh tensor of ours
        if self.gelu is not None:  # the model's GELU, torch's own kernel, in place: no second (M, N) buffer
            torch.ops.aten.gelu_(y, approximate=self.gelu)
        return y.reshape(*x.shape[:-1], self.out_features)

    def _forward_2d(self, x2: torch.Tensor) -> torch.Tensor:  # (M, K) -> (M, N)
        kernel = int8_kernel(x2.device)
        if kernel == "onednn":
            gemm = self._onednn()
            if gemm is not None:
                return self._onednn_forward(x2, gemm)
            kernel = "ort" if ort_int_gemm(x2.device) else "fp32"  # 8-bit codes: oneDNN would saturate
        if kernel != "int_mm":
            return self._ort_forward(x2) if kernel == "ort" else self._float_codes_forward(x2)
        q = self._shifted_codes(x2, self.mid, torch.int8)  # c - m in [-128, 127]
        try:
            acc = torch._int_mm(q, self.codes.t())  # (M, N) int32; CPU: oneDNN VNNI
        except RuntimeError:  # shapes/devices the kernel rejects (e.g. CUDA M <= 16): exact via float64
            acc = (q.double() @ self.codes.double().t()).to(torch.int32)
        acc.add_(self.corr)  # sum (c - m) w + (m - z) sum w = sum (c - z) w, exact
        return rescale(acc.float(), self.comb, self.bias)

    def _shifted_codes(self, x2: torch.Tensor, shift: float, dtype: torch.dtype) -> torch.Tensor:
        """The student's input codes minus ``shift`` as ``dtype`` (M, K): ``round(x * (1/s))`` (the student's
        rounding, not quantize's FMA) ``+ z - shift``, clamped to ``[qmin - shift, qmax - shift]``; one fused
        pass when :attr:`compiled` (:mod:`sdq.quant.fused_codes`, the same codes)."""
        return gemm_codes(x2, self.inv, self.z - shift, self.qmin - shift, self.qmax - shift, dtype,
                          compiled=self.compiled)

    def _onednn_forward(self, x2: torch.Tensor, gemm: OnednnIntGemm) -> torch.Tensor:
        """The student's codes (shifted to [0, qmax - qmin], uint8) through oneDNN's exact u8 x s8 GEMM
        (:mod:`sdq.quant.onednn_gemm`), with the shared epilogue inside it where oneDNN's equals
        :func:`rescale`. (M, K) -> (M, N)."""
        a = self._shifted_codes(x2, self.qmin, torch.uint8)  # c - qmin in [0, qmax - qmin]
        y = gemm(a, int(self.z - self.qmin))  # (M, N) sum (c - z) w [* comb + bias]
        return y if gemm.fused else rescale(y, self.comb, self.bias)

    def _onednn(self) -> OnednnIntGemm | None:
        """oneDNN's packed weight (and epilogue) when its GEMM is exact on the codes (within [-64, 64], or any
        int8 codes on CPUs with VNNI: :func:`~sdq.quant.onednn_gemm.onednn_exact_on`), else None; rebuilt when
        the codes, scales or bias change."""
        key = tuple((t.data_ptr(), t._version) for t in (self.codes, self.comb, self.bias) if t is not None)
        cached = self.__dict__.get("_dnnl")
        if cached is None or cached[0] != key:
            gemm = None
            if onednn_exact_on(self.codes):
                gemm = OnednnIntGemm(self.codes, self.comb, self.bias) if onednn_fused_epilogue() else \
                    OnednnIntGemm(self.codes)
            cached = (key, gemm)
            self.__dict__["_dnnl"] = cached
        return cached[1]

    def _ort_forward(self, x2: torch.Tensor) -> torch.Tensor:
        """onnxruntime computes the student's codes and their exact integer product (u8 x s8 on 7-bit weights)
        (:mod:`sdq.quant.ort_gemm`); the shared epilogue gives the student's floats. (M, K) -> (M, N)."""
        return rescale(self._gemm()(x2), self.comb, self.bias)

    def _gemm(self):
        """The onnxruntime GEMM of the current codes, built on first use (and again after the codes or
        torch's thread count or the input quantizer's constants change, e.g. after ``load_state_dict``)."""
        key = (self.codes.data_ptr(), self.codes._version, torch.get_num_threads(), self.inv, self.z, self.qmin,
               self.qmax)
        cached = self.__dict__.get("_ort")
        if cached is None or cached[0] != key:
            cached = (key, OrtIntGemm(self.codes, self.inv, int(self.z - self.qmin), int(self.qmax - self.qmin)))
            self.__dict__["_ort"] = cached
        return cached[1]

    def __getstate__(self) -> dict:  # copy / pickle without the onnxruntime session / oneDNN weight (rebuilt)
        state = super().__getstate__()
        return {k: v for k, v in state.items() if k not in ("_ort", "_dnnl")}

    def _float_codes_forward(self, x2: torch.Tensor) -> torch.Tensor:
        """The student's own eval arithmetic (:func:`int_domain_linear`): integer codes in an fp32 GEMM,
        exact, for CPUs whose ``torch._int_mm`` has no fast kernel. (M, K) -> (M, N)."""
        cx = input_codes(x2, self.inv, self.z, self.qmin, self.qmax)  # (M, K)
        acc = torch.nn.functional.linear(cx, self.codes.float())  # (M, N) exact integers in fp32
        return rescale(acc, self.comb, self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"int8 x int8 -> int32, act zero_point={int(self.z)}" + (", compiled input codes" if self.compiled
                                                                          else "")
                + (f", gelu={self.gelu!r} in place" if self.gelu is not None else ""))
