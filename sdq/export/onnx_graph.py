"""ONNX graph surgery: turn the float MatMuls of an exported encoder into the student's integer ops.

Each Linear of the student becomes, by its own quantizers (``LinearPlan``):

- integer W8A8-style: ``QuantizeLinear(x, s_a, z_a)`` (the student's calibrated activation scale) ->
  ``com.microsoft.MatMulIntegerToFloat(x_q, W_q, s_a, s_w, z_a, z_w)``: int8 x int8 -> int32 on
  MLAS/VNNI, rescaled per output channel: ``(x_q - z_a) @ (W_q - z_w) * s_a * s_w`` -- the same
  numbers as the fake-quantized forward (up to float summation order);
- a float MatMul (weights grouped or non-uniform, or inputs quantized per channel or per token), its input
  rotated first when the student rotates it and then through ``QuantizeLinear -> DequantizeLinear`` (per
  channel: ``axis=-1``) or the per-token ops of :mod:`sdq.export.onnx_dynamic`, its
  weight stored as 8-bit uniform codes + scales and dequantized in the graph (``Cast -> Sub -> Mul``,
  constant-folded by onnxruntime at session start) or, for non-uniform schemes, as the effective weight;
- nothing: the float MatMul stays.

MatMul nodes are found by the module scope torch's exporter writes into node names
(``/roberta/encoder/layer.0/attention/self/query/MatMul`` -> ``roberta.encoder.layer.0.attention.self.query``);
the weight initializer is checked against the plan's effective weight before anything is replaced.

>>> n = rewrite_linears(onnx_model, {"roberta.encoder.layer.0.intermediate.dense": plan, ...})
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from sdq.errors import SdqError
from sdq.export.onnx_dynamic import SharedInputs, TokenQuant


@dataclass(eq=False)
class ActQuant:
    """Activation quantization ``q = clamp(round(x * (1/scale)) + zp, qmin, qmax)``: per tensor (``scale`` a
    float), or per input channel (``scale``/``zero_point`` arrays (in,) along the last axis)."""

    scale: float | np.ndarray
    zero_point: int | np.ndarray
    qmin: int
    qmax: int

    @property
    def signed(self) -> bool:
        return self.qmin < 0

    @property
    def per_channel(self) -> bool:
        return np.ndim(self.scale) > 0

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, ActQuant) and (self.qmin, self.qmax) == (other.qmin, other.qmax)
                and np.array_equal(self.scale, other.scale) and np.array_equal(self.zero_point, other.zero_point))


@dataclass
class LinearPlan:
    """How one Linear runs: ``weight`` (out, in) effective float weight (what the graph holds now);
    ``codes`` (out, in) integer weight codes with ``w_scale``/``w_zero_point`` (out,) when integer;
    ``act``: the input quantization, or None; ``grouped``: the uniform codes (G, n) with scale/zero point
    (G, 1) of sdq.quant's grouped view (any granularity), stored as 8-bit codes when the MatMul stays float;
    ``rotated``: the student's weight (out, in) in its rotated input basis when it rotates the input (the
    codes are in that basis too), else None."""

    weight: np.ndarray
    act: ActQuant | TokenQuant | None = None
    codes: np.ndarray | None = None
    w_scale: np.ndarray | None = None
    w_zero_point: np.ndarray | None = None
    grouped: tuple[np.ndarray, np.ndarray, np.ndarray | None] | None = None
    rotated: np.ndarray | None = None

    @property
    def integer(self) -> bool:  # MatMulIntegerToFloat takes one activation scale: per-tensor inputs only
        return (isinstance(self.act, ActQuant) and not self.act.per_channel and self.codes is not None
                and self.rotated is None)


def scope_of(node_name: str) -> str:
    """``/a/b.0/c/MatMul`` -> ``a.b.0.c`` (module path written by torch's TorchScript exporter)."""
    parts = node_name.strip("/").split("/")
    return ".".join(parts[:-1])


def _act_nodes(x: str, name: str, act: ActQuant, dequant: bool, inits: list) -> tuple[list, str]:
    """``Mul(x, 1/s)`` -> QuantizeLinear with unit scale (the student's ``round(x * (1/s)) + z``, half to even)
    (+ Clip for < 8 bits) (+ DequantizeLinear with ``s``) of tensor ``x`` (per channel: along its last axis)."""
    dt = np.int8 if act.signed else np.uint8
    scale, zp = np.asarray(act.scale, np.float32), np.asarray(act.zero_point)
    if int(zp.min()) < np.iinfo(dt).min or int(zp.max()) > np.iinfo(dt).max:
        raise SdqError(f"{name}: activation zero point [{zp.min()}, {zp.max()}] does not fit {np.dtype(dt).name}")
    s, z, inv, one = f"{name}.a_scale", f"{name}.a_zero_point", f"{name}.a_inv_scale", f"{name}.a_unit_scale"
    inits += [numpy_helper.from_array(scale, s), numpy_helper.from_array(zp.astype(dt), z),
              numpy_helper.from_array(np.asarray(np.float32(1.0) / scale, np.float32), inv),  # as torch's 1/s
              numpy_helper.from_array(np.ones_like(scale), one)]
    axis = {"axis": -1} if act.per_channel else {}
    nodes = [helper.make_node("Mul", [x, inv], [f"{name}.x_s"], name=f"{name}/Mul"),
             helper.make_node("QuantizeLinear", [f"{name}.x_s", one, z], [f"{name}.x_q"],
                              name=f"{name}/QuantizeLinear", **axis)]
    out = f"{name}.x_q"
    full = (-128, 127) if act.signed else (0, 255)
    if (act.qmin, act.qmax) != full:
        lo, hi = f"{name}.a_qmin", f"{name}.a_qmax"
        inits += [numpy_helper.from_array(np.array(act.qmin, dt), lo),
                  numpy_helper.from_array(np.array(act.qmax, dt), hi)]
        nodes.append(helper.make_node("Clip", [out, lo, hi], [f"{name}.x_qc"], name=f"{name}/Clip"))
        out = f"{name}.x_qc"
    if dequant:
        nodes.append(helper.make_node("DequantizeLinear", [out, s, z], [f"{name}.x_dq"],
                                      name=f"{name}/DequantizeLinear", **axis))
        out = f"{name}.x_dq"
    return nodes, out


def _code_dtype(codes: np.ndarray, name: str) -> type:
    """int8 for codes in [-128, 127], else uint8 for codes in [0, 255]; SdqError when neither holds them."""
    dt = np.int8 if int(codes.min()) < 0 or int(codes.max()) <= 127 else np.uint8
    if int(codes.min()) < np.iinfo(dt).min or int(codes.max()) > np.iinfo(dt).max:
        raise SdqError(f"{name}: weight codes [{codes.min()}, {codes.max()}] do not fit 8 bits")
    return dt


def _int_weight(plan: LinearPlan, name: str, inits: list) -> tuple[str, str, str]:
    codes = plan.codes
    dt = _code_dtype(codes, name)
    w, s, z = f"{name}.w_q", f"{name}.w_scale", f"{name}.w_zero_point"
    zp = plan.w_zero_point if plan.w_zero_point is not None else np.zeros(codes.shape[0])
    inits += [numpy_helper.from_array(np.ascontiguousarray(codes.T.astype(dt)), w),  # (in, out)
              numpy_helper.from_array(np.asarray(plan.w_scale, np.float32).reshape(-1), s),
              numpy_helper.from_array(np.asarray(zp).reshape(-1).astype(dt), z)]
    return w, s, z


def _dequant_weight(plan: LinearPlan, name: str, inits: list) -> tuple[list, str]:
    """8-bit codes -> Cast -> (- zero point) -> * scale per group -> (out, in) -> (in, out): the student's
    ``(q - z) * s``, folded into a float initializer once by onnxruntime's constant folding."""
    codes, scale, zp = plan.grouped  # (G, n), (G, 1), (G, 1) | None
    dt = _code_dtype(codes, name)
    c, s, shape = f"{name}.w_codes", f"{name}.w_group_scale", f"{name}.w_shape"
    inits += [numpy_helper.from_array(np.ascontiguousarray(codes.astype(dt)), c),
              numpy_helper.from_array(np.asarray(scale, np.float32), s),
              numpy_helper.from_array(np.array(plan.weight.shape, np.int64), shape)]
    nodes = [helper.make_node("Cast", [c], [f"{c}.f"], to=TensorProto.FLOAT, name=f"{name}/w_Cast")]
    out = f"{c}.f"
    if zp is not None:
        inits.append(numpy_helper.from_array(np.asarray(zp, np.float32), f"{name}.w_group_zero_point"))
        nodes.append(helper.make_node("Sub", [out, f"{name}.w_group_zero_point"], [f"{c}.z"], name=f"{name}/w_Sub"))
        out = f"{c}.z"
    nodes += [helper.make_node("Mul", [out, s], [f"{c}.s"], name=f"{name}/w_Mul"),
              helper.make_node("Reshape", [f"{c}.s", shape], [f"{c}.w"], name=f"{name}/w_Reshape"),  # (out, in)
              helper.make_node("Transpose", [f"{c}.w"], [f"{name}.w_dq"], perm=[1, 0], name=f"{name}/w_T")]
    return nodes, f"{name}.w_dq"


def rewrite_linears(model: onnx.ModelProto, plans: dict[str, LinearPlan], check_atol: float = 0.0) -> dict:
    """Rewrite the MatMul of every planned Linear in place; returns counts per kind of rewrite.

    Raises SdqError when a planned Linear has no MatMul or its initializer is not the plan's weight.
    """
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    found: set[str] = set()
    new_nodes, new_inits = [], []
    counts = {"integer": 0, "act_qdq": 0, "float": 0, "int_weight": 0, "per_token": 0, "rotated": 0}
    shared = SharedInputs(new_inits)  # rotations and per-token quantizations, once per input tensor
    for node in graph.node:
        name = scope_of(node.name) if node.op_type == "MatMul" else ""
        plan = plans.get(name)
        if plan is None:
            new_nodes.append(node)
            continue
        found.add(name)
        x, b = node.input
        if b not in inits:
            raise SdqError(f"ONNX MatMul {node.name} has no constant weight; re-export with constant folding")
        w_graph = numpy_helper.to_array(inits[b])  # (in, out)
        if w_graph.shape != plan.weight.T.shape or not np.allclose(w_graph, plan.weight.T, atol=check_atol,
                                                                    rtol=0):
            raise SdqError(f"ONNX MatMul {node.name} does not hold the weight of {name}; export mismatch")
        if plan.integer:
            nodes, xq = _act_nodes(x, name, plan.act, dequant=False, inits=new_inits)
            w, s, z = _int_weight(plan, name, new_inits)
            nodes.append(helper.make_node("MatMulIntegerToFloat", [xq, w, f"{name}.a_scale", s,
                                                                   f"{name}.a_zero_point", z],
                                          list(node.output), name=f"{name}/MatMulIntegerToFloat",
                                          domain="com.microsoft"))
            counts["integer"] += 1
        else:
            nodes, w = ([], b) if plan.grouped is None else _dequant_weight(plan, name, new_inits)
            if plan.rotated is not None:
                rot, x = shared.rotated(x, plan.weight.shape[1])
                nodes += rot
                if plan.grouped is None:  # the effective weight in the rotated basis, (in, out)
                    w = f"{name}.w_rot"
                    new_inits.append(numpy_helper.from_array(np.ascontiguousarray(plan.rotated.T), w))
                counts["rotated"] += 1
            if isinstance(plan.act, TokenQuant):
                qdq, x = shared.per_token(x, plan.act)
                nodes += qdq
            elif plan.act is not None:
                qdq, x = _act_nodes(x, name, plan.act, dequant=True, inits=new_inits)
                nodes += qdq
            nodes.append(helper.make_node("MatMul", [x, w], list(node.output), name=node.name))
            counts["per_token" if isinstance(plan.act, TokenQuant) else "act_qdq" if plan.act is not None
                   else "float"] += 1
            counts["int_weight"] += plan.grouped is not None
        new_nodes.extend(nodes)
    missing = sorted(set(plans) - found)
    if missing:
        raise SdqError(f"ONNX graph has no MatMul for {missing[0]} (and {len(missing) - 1} more); "
                       "the exporter changed node names, re-export with dynamo=False")
    still_used = {i for n in new_nodes for i in n.input}
    keep = [t for t in graph.initializer if t.name in still_used]
    del graph.node[:]
    graph.node.extend(new_nodes)
    del graph.initializer[:]
    graph.initializer.extend(keep + new_inits)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return counts


def _shared_act(plans: list[LinearPlan]) -> ActQuant | None:
    acts = [p.act for p in plans]
    if any(a is None for a in acts) or any(a != acts[0] for a in acts):
        return None
    full = (-128, 127) if acts[0].signed else (0, 255)
    return acts[0] if (acts[0].qmin, acts[0].qmax) == full else None


def fusable_qkv(q: LinearPlan, k: LinearPlan, v: LinearPlan) -> bool:
    """Q/K/V run as one ``QAttention``: integer plans with one shared activation quantization and
    symmetric (zero-point-free) weights."""
    plans = [q, k, v]
    return (all(p.integer for p in plans) and _shared_act(plans) is not None
            and all(p.w_zero_point is None or not np.any(p.w_zero_point) for p in plans))


def rewrite_attention(model: onnx.ModelProto, qkv: dict[str, tuple[LinearPlan, LinearPlan, LinearPlan]]) -> int:
    """Fused ``Attention`` (packed QKV weight (H, 3H)) -> static ``QuantizeLinear`` + ``QAttention`` with
    the layer's integer Q/K/V codes and per-column scales. ``qkv``: layer prefix -> (q, k, v) plans
    (each ``fusable_qkv``). Returns the number of rewritten nodes; raises if a layer was not found."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    new_nodes, new_inits, done = [], [], set()
    for node in graph.node:
        if node.op_type != "Attention" or node.input[1] not in inits:
            new_nodes.append(node)
            continue
        w = numpy_helper.to_array(inits[node.input[1]])  # (H, 3H)
        match = next((p for p, (q, k, v) in qkv.items() if p not in done
                      and w.shape == (q.weight.shape[1], 3 * q.weight.shape[0])
                      and np.array_equal(w, np.concatenate([q.weight.T, k.weight.T, v.weight.T], 1))), None)
        if match is None:
            new_nodes.append(node)
            continue
        done.add(match)
        q, k, v = qkv[match]
        act = q.act
        name = f"{match}.qkv"
        nodes, xq = _act_nodes(node.input[0], name, act, dequant=False, inits=new_inits)
        codes = np.concatenate([q.codes, k.codes, v.codes], 0)  # (3H, H)
        scale = np.concatenate([q.w_scale, k.w_scale, v.w_scale]).astype(np.float32)
        new_inits += [numpy_helper.from_array(np.ascontiguousarray(codes.T.astype(np.int8)), f"{name}.w_q"),
                      numpy_helper.from_array(scale, f"{name}.w_scale"),
                      numpy_helper.from_array(np.array(0, np.int8), f"{name}.w_zero_point")]
        mask = node.input[3] if len(node.input) > 3 else ""
        nodes.append(helper.make_node(
            "QAttention", [xq, f"{name}.w_q", node.input[2], f"{name}.a_scale", f"{name}.w_scale", mask,
                           f"{name}.a_zero_point", f"{name}.w_zero_point"],
            list(node.output), name=f"{name}/QAttention", domain="com.microsoft",
            **{a.name: helper.get_attribute_value(a) for a in node.attribute}))
        new_nodes.extend(nodes)
    missing = sorted(set(qkv) - done)
    if missing:
        raise SdqError(f"ONNX graph has no fused Attention for {missing[0]}; optimizer fusion failed")
    still_used = {i for n in new_nodes for i in n.input}
    keep = [t for t in graph.initializer if t.name in still_used]
    del graph.node[:]
    graph.node.extend(new_nodes)
    del graph.initializer[:]
    graph.initializer.extend(keep + new_inits)
    return len(done)
