"""``backend="int8"``: the exported model in torch, int8 x int8 -> int32 GEMMs, bit-identical to the student.

Every Linear whose input the student quantized per tensor and whose weight is uniform symmetric per
channel/tensor (<= 8 bits) becomes a :class:`~sdq.int8.Int8Linear` built from the packed codes
(the student's eval forward computes the same integers, :mod:`sdq.quant.intdomain`); other Linears with
quantized inputs (per channel, per token, rotated) keep the student's rotation and activation fake-quant
before a float matmul on the dequantized weight (in the rotated basis where the student rotates).
Everything else (embeddings dequantized bit-exactly, LayerNorm, attention) is the same HF code as the
student's, so the logits are equal, not close.

>>> model = int8_model(plain, meta, arrays)        # plain: HF model with the dequantized state loaded
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as TF
from torch import nn

from sdq.errors import SdqError
from sdq.export.int8_fuse import fuse_int8
from sdq.export.pack import codes_of, dequantize
from sdq.int8 import Int8Linear
from sdq.quant.functional import fake_quant
from sdq.quant.per_token import fake_quant_per_token
from sdq.quant.rotation import rotate


class ActQuantLinear(nn.Module):
    """A Linear whose input is fake-quantized as the student's: static params (per tensor or channel) or
    each token's own range (``granularity="token"``), or not at all (``act`` None); after the student's
    rotation when ``rotate`` (then ``linear`` holds the weight in the rotated basis, as the student's forward
    uses it)."""

    def __init__(self, linear: nn.Linear, act: dict | None, rotate: bool = False):
        super().__init__()
        act = act or {}
        self.linear, self.granularity, self.rotate = linear, act.get("granularity"), rotate
        self.symmetric = bool(act.get("symmetric", False))
        self.qmin, self.qmax = float(act.get("qmin", 0)), float(act.get("qmax", 0))
        if self.granularity in ("token", None):  # dynamic, or an FP input (rotation only): no stored params
            self.scale = self.zero_point = None
            return
        shape = (1, 1) if self.granularity == "tensor" else (1, len(act["scale"]))
        self.register_buffer("scale", torch.tensor(act["scale"], dtype=torch.float32).reshape(shape))
        self.register_buffer("zero_point", torch.tensor(act["zero_point"], dtype=torch.float32).reshape(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., K) -> (..., N)
        if self.rotate:
            x = rotate(x)
        if self.granularity == "tensor":  # the student's grouped view: (1, numel)
            xq = fake_quant(x.reshape(1, -1), self.scale, self.zero_point, self.qmin, self.qmax)
        elif self.granularity is None:
            xq = x
        elif self.granularity == "token":  # one range per row of (N, C)
            xq = fake_quant_per_token(x.reshape(-1, x.shape[-1]), self.qmin, self.qmax, self.symmetric)
        else:  # (C, N) view of (N, C) memory: per-column params on the (N, C) tensor
            xq = fake_quant(x.reshape(-1, x.shape[-1]), self.scale, self.zero_point, self.qmin, self.qmax)
        return TF.linear(xq.reshape(x.shape), self.linear.weight, self.linear.bias)


def int8_linear(linear: nn.Linear, key: str, packed: dict | None, act: dict,
                arrays: dict[str, np.ndarray]) -> Int8Linear | None:
    """An Int8Linear from a packed weight + per-tensor activation params, or None when not int8-executable."""
    if (packed is None or packed.get("rotated") or act["granularity"] != "tensor" or act["bits"] > 8
            or packed["scheme"] != "uniform" or packed["granularity"] not in ("channel", "tensor") or packed["bits"] > 8
            or f"{key}.zero_point" in arrays or f"{key}.offset" in arrays):
        return None
    codes = codes_of(packed, arrays, key).reshape(linear.out_features, linear.in_features)
    if int(codes.min()) < -128 or int(codes.max()) > 127:
        return None
    w_scale = torch.from_numpy(np.array(arrays[f"{key}.scale"])).reshape(-1)
    bias = None if linear.bias is None else linear.bias.detach()
    return Int8Linear(codes, w_scale, bias, float(np.float32(act["scale"][0])), act["zero_point"][0],
                      act["qmin"], act["qmax"])


def int8_model(plain: nn.Module, meta: dict, arrays: dict[str, np.ndarray], compile: bool = False,
               fuse: bool = True) -> nn.Module:
    """Swap the quantized-input Linears of ``plain`` (dequantized state loaded) in place; returns it.
    ``compile``: the Int8Linears quantize their inputs in one compiled pass (:mod:`sdq.int8.fused_codes`).
    ``fuse``: Q/K/V as one GEMM and GELU in place on its GEMM's output (:mod:`sdq.export.int8_fuse`, exact)."""
    if meta.get("attention_quantized"):
        raise SdqError("this export quantizes attention internals (Q/K/V/probs), which backend=int8 does not "
                       "reproduce; load it with backend=onnx")
    acts = meta.get("acts", {})
    for name, mod in list(plain.named_modules()):
        for child, lin in list(mod.named_children()):
            full = f"{name}.{child}" if name else child
            key = f"{full}.weight"
            packed, act = meta["tensors"].get(key), acts.get(full)
            rotated = bool(packed and packed.get("rotated"))  # the input rotated (even when not quantized)
            if not isinstance(lin, nn.Linear) or (act is None and not rotated):
                continue
            new = None if act is None else int8_linear(lin, key, packed, act, arrays)
            if new is not None:
                new.compiled = compile
            elif rotated:  # the student's weight in its rotated basis, bit for bit
                lin.weight.data = dequantize(packed, arrays, key).to(lin.weight.dtype)
            setattr(mod, child, new if new is not None else ActQuantLinear(lin, act, rotated))
    if fuse:
        fuse_int8(plain)
    return plain.eval()
