"""Int8Linear: a QuantLinear's int8 export, an integer GEMM that gives the student's floats bit for bit.

The student's eval forward (:func:`sdq.quant.intdomain.int_domain_linear`) sums integer codes in fp32 and
rescales once; ``Int8Linear`` holds the same codes as int8 and runs the same sum on an integer kernel
(:mod:`sdq.int8.kernels`), then the same epilogue (:func:`~sdq.quant.intdomain.rescale`)::

    y = (c_x @ c_w^T) * (s_x * s_w) + b

>>> i8 = int8_linear(qlinear)            # == Int8Linear.from_quant_linear(qlinear); i8(x) == qlinear(x)
"""

from __future__ import annotations

import torch
from torch import nn

from sdq.int8.cpu import s8_exact
from sdq.int8.fused_codes import gemm_codes
from sdq.int8.kernels import int8_kernel, ort_int_gemm
from sdq.int8.onednn_gemm import OnednnIntGemm, onednn_available
from sdq.int8.ort_gemm import OrtIntGemm
from sdq.quant.intdomain import combined_scale, input_codes, int_domain_ok, rescale


def int8_linear(layer: nn.Module) -> Int8Linear:
    """The int8 export of a QuantLinear that :func:`~sdq.quant.intdomain.int_domain_ok` accepts (else
    ValueError): one call for :meth:`Int8Linear.from_quant_linear`.

    >>> i8 = int8_linear(model.encoder.layer[0].intermediate.dense)
    """
    return Int8Linear.from_quant_linear(layer)


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
        except RuntimeError:  # shapes/devices the kernel rejects (e.g. CUDA M <= 16): the student's arithmetic
            return self._float_codes_forward(x2)
        acc.add_(self.corr)  # sum (c - m) w + (m - z) sum w = sum (c - z) w, exact
        return rescale(acc.float(), self.comb, self.bias)

    def _shifted_codes(self, x2: torch.Tensor, shift: float, dtype: torch.dtype) -> torch.Tensor:
        """The student's input codes minus ``shift`` as ``dtype`` (M, K): ``round(x * (1/s))`` (the student's
        rounding, not quantize's FMA) ``+ z - shift``, clamped to ``[qmin - shift, qmax - shift]``; one fused
        pass when :attr:`compiled` (:mod:`sdq.int8.fused_codes`, the same codes)."""
        return gemm_codes(x2, self.inv, self.z - shift, self.qmin - shift, self.qmax - shift, dtype,
                          compiled=self.compiled)

    def _onednn_forward(self, x2: torch.Tensor, gemm: OnednnIntGemm) -> torch.Tensor:
        """The student's codes (shifted to [0, qmax - qmin], uint8) through oneDNN's exact u8 x s8 GEMM with the
        shared epilogue inside it (:mod:`sdq.int8.onednn_gemm`). (M, K) -> (M, N)."""
        a = self._shifted_codes(x2, self.qmin, torch.uint8)  # c - qmin in [0, qmax - qmin]
        return gemm(a, int(self.z - self.qmin))  # (M, N) sum (c - z) w * comb + bias

    def _onednn(self) -> OnednnIntGemm | None:
        """oneDNN's packed weight and epilogue when its GEMM is exact here (:func:`onednn_available`) on the
        codes (within [-64, 64]), else None; rebuilt when the codes, scales or bias change."""
        key = tuple((t.data_ptr(), t._version) for t in (self.codes, self.comb, self.bias) if t is not None)
        cached = self.__dict__.get("_dnnl")
        if cached is None or cached[0] != key:
            exact = onednn_available() and s8_exact(self.codes)
            cached = (key, OnednnIntGemm(self.codes, self.comb, self.bias) if exact else None)
            self.__dict__["_dnnl"] = cached
        return cached[1]

    def _ort_forward(self, x2: torch.Tensor) -> torch.Tensor:
        """onnxruntime computes the student's codes and their exact integer product (u8 x u8)
        (:mod:`sdq.int8.ort_gemm`); the shared epilogue gives the student's floats. (M, K) -> (M, N)."""
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
        """The student's own eval arithmetic (:func:`~sdq.quant.intdomain.int_domain_linear`): integer codes in
        an fp32 GEMM, exact on any device. (M, K) -> (M, N)."""
        cx = input_codes(x2, self.inv, self.z, self.qmin, self.qmax)  # (M, K)
        acc = torch.nn.functional.linear(cx, self.codes.float())  # (M, N) exact integers in fp32
        return rescale(acc, self.comb, self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"int8 x int8 -> int32, act zero_point={int(self.z)}" + (", compiled input codes" if self.compiled
                                                                          else "")
                + (f", gelu={self.gelu!r} in place" if self.gelu is not None else ""))
