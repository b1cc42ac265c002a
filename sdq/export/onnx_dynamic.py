"""ONNX nodes for a Linear input that the student rotates (``quant.act.rotate``) and quantizes per token
(``granularity=token``): standard ops only, the student's arithmetic written out.

- rotation: ``Mul`` by the ±1 signs, ``Reshape`` to (N, m, p), ``MatMul`` by the Sylvester H_p (or by its
  two factors on (N, m, p1, p2) for large p), by Paley's 12 x 12 across the m = 12 blocks (``Transpose``d
  around it), ``Reshape`` back, ``Mul`` by 1/sqrt(n) (:func:`sdq.quant.rotation.factors`: the products of
  :func:`~sdq.quant.rotation.rotate`, ~n (p + 12) multiply-adds per token instead of n^2);
- per-token fake-quant: ``ReduceMin``/``ReduceMax`` over the last axis, the scale and zero point of
  :func:`sdq.quant.functional.scale_zero_point`, then ``(clip(round(x * (1/s)) + z) - z) * s``
  (``Round`` is half to even, as torch's).

Q, K and V share one input: :class:`SharedInputs` rotates and quantizes each tensor once.

>>> shared = SharedInputs(inits); nodes, xr = shared.rotated("x", 384)
>>> more, xq = shared.per_token(xr, TokenQuant(0, 255, False))      # ([], xq) when already built
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from onnx import helper, numpy_helper

from sdq.quant.functional import EPS
from sdq.quant.rotation import dims, factors


@dataclass(frozen=True)
class TokenQuant:
    """Dynamic min-max quantization of each token (row of the last axis) to ``[qmin, qmax]``."""

    qmin: int
    qmax: int
    symmetric: bool


def _const(name: str, value, inits: list, dtype=np.float32) -> str:
    inits.append(numpy_helper.from_array(np.asarray(value, dtype), name))
    return name


class SharedInputs:
    """The rotated and the per-token-quantized copy of each input tensor, each built once (its nodes returned
    by the first call; Q, K and V share their input)."""

    def __init__(self, inits: list):
        self.inits, self.done, self.widths = inits, {}, set()

    def per_token(self, x: str, q: TokenQuant) -> tuple[list, str]:
        """Nodes (empty when already built) and the name of ``x`` fake-quantized per token as ``q``."""
        if (x, q) in self.done:
            return [], self.done[(x, q)]
        nodes, xq = token_nodes(x, f"{x}.q{q.qmin}_{q.qmax}{'s' if q.symmetric else ''}", q, self.inits)
        self.done[(x, q)] = xq
        return nodes, xq

    def rotated(self, x: str, n: int) -> tuple[list, str]:
        """Nodes (empty when already built) and the name of ``rotate(x)`` for x (..., n)."""
        if x in self.done:
            return [], self.done[x]
        m, p1, p2 = dims(n)
        f, p, inits = factors(n), f"rot{n}", self.inits
        if n not in self.widths:  # one copy of the factors per width
            self.widths.add(n)
            for k, v in f.items():
                _const(f"{p}.{k}", v.numpy().T if k == "h12" else v.numpy(), inits)  # h12 stored transposed
            _const(f"{p}.blocks", [-1, m, p1, p2], inits, np.int64)
            _const(f"{p}.rows", [-1, m, p1 * p2], inits, np.int64)
            _const(f"{p}.norm", np.float32(1.0 / math.sqrt(n)), inits)
        y = f"{x}.rot"
        nodes = [helper.make_node("Mul", [x, f"{p}.signs"], [f"{y}.s"], name=f"{y}/Mul_signs")]
        if "syl_p" in f:  # H_p as one product on (N, m, p)
            nodes += [helper.make_node("Reshape", [f"{y}.s", f"{p}.rows"], [f"{y}.b"], name=f"{y}/Reshape_rows"),
                      helper.make_node("MatMul", [f"{y}.b", f"{p}.syl_p"], [f"{y}.h"], name=f"{y}/MatMul_p")]
        else:  # H_p1 (x) H_p2 on (N, m, p1, p2)
            nodes += [helper.make_node("Reshape", [f"{y}.s", f"{p}.blocks"], [f"{y}.b"], name=f"{y}/Reshape_blocks"),
                      helper.make_node("MatMul", [f"{y}.b", f"{p}.syl_p2"], [f"{y}.h2"], name=f"{y}/MatMul_p2"),
                      helper.make_node("MatMul", [f"{p}.syl_p1", f"{y}.h2"], [f"{y}.h"], name=f"{y}/MatMul_p1")]
        last = f"{y}.h"
        if m > 1:  # (N, m, p) -> (N, p, m) @ H12^T -> (N, m, p)
            nodes += [helper.make_node("Reshape", [last, f"{p}.rows"], [f"{y}.r"], name=f"{y}/Reshape_mix"),
                      helper.make_node("Transpose", [f"{y}.r"], [f"{y}.t"], perm=[0, 2, 1], name=f"{y}/Transpose_in"),
                      helper.make_node("MatMul", [f"{y}.t", f"{p}.h12"], [f"{y}.m"], name=f"{y}/MatMul_h12"),
                      helper.make_node("Transpose", [f"{y}.m"], [f"{y}.h12"], perm=[0, 2, 1], name=f"{y}/Transpose_out")]
            last = f"{y}.h12"
        nodes += [helper.make_node("Shape", [x], [f"{y}.shape"], name=f"{y}/Shape"),
                  helper.make_node("Reshape", [last, f"{y}.shape"], [f"{y}.u"], name=f"{y}/Reshape_back"),
                  helper.make_node("Mul", [f"{y}.u", f"{p}.norm"], [y], name=f"{y}/Mul_norm")]
        self.done[x] = y
        return nodes, y


def token_nodes(x: str, name: str, q: TokenQuant, inits: list) -> tuple[list, str]:
    """Nodes and output name of ``x`` fake-quantized per token (each row of its last axis its own range);
    ``name`` prefixes every node, output and constant."""
    c = lambda s, v: _const(f"{name}.{s}", v, inits)
    t = f"{name}.tok"
    n = lambda op, ins, out, **kw: helper.make_node(op, ins, [f"{t}.{out}"], name=f"{t}/{out}", **kw)
    nodes = [n("ReduceMin", [x], "lo", axes=[-1], keepdims=1), n("ReduceMax", [x], "hi", axes=[-1], keepdims=1)]
    qmin, qmax, eps = c("t_qmin", float(q.qmin)), c("t_qmax", float(q.qmax)), c("t_eps", EPS)
    if q.symmetric:  # scale = max(|lo|, |hi|) / qmax, zero point 0
        nodes += [n("Abs", [f"{t}.lo"], "alo"), n("Abs", [f"{t}.hi"], "ahi"),
                  n("Max", [f"{t}.alo", f"{t}.ahi"], "amax"), n("Div", [f"{t}.amax", qmax], "s0"),
                  n("Max", [f"{t}.s0", eps], "scale")]
        zp = c("t_zero", 0.0)
    else:  # [min(lo, 0), max(hi, 0)] onto [qmin, qmax]
        zero, width = c("t_zero", 0.0), c("t_width", float(q.qmax - q.qmin))
        nodes += [n("Min", [f"{t}.lo", zero], "lo0"), n("Max", [f"{t}.hi", zero], "hi0"),
                  n("Sub", [f"{t}.hi0", f"{t}.lo0"], "range"), n("Div", [f"{t}.range", width], "s0"),
                  n("Max", [f"{t}.s0", eps], "scale"), n("Div", [f"{t}.lo0", f"{t}.scale"], "los"),
                  n("Round", [f"{t}.los"], "lor"), n("Sub", [qmin, f"{t}.lor"], "z0"),
                  n("Clip", [f"{t}.z0", qmin, qmax], "zp")]
        zp = f"{t}.zp"
    nodes += [n("Reciprocal", [f"{t}.scale"], "inv"), n("Mul", [x, f"{t}.inv"], "xs"),
              n("Round", [f"{t}.xs"], "xr"), n("Add", [f"{t}.xr", zp], "xz"),
              n("Clip", [f"{t}.xz", qmin, qmax], "q"), n("Sub", [f"{t}.q", zp], "qz"),
              n("Mul", [f"{t}.qz", f"{t}.scale"], "dq")]
    return nodes, f"{t}.dq"
