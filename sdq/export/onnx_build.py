"""Build the integer ONNX model of an export: torch.onnx export of the plain model, onnxruntime's
BERT fusions (Attention / SkipLayerNorm / BiasGelu), then the student's own quantization written in.

W8A8 Linears run as static ``QuantizeLinear`` + ``MatMulIntegerToFloat`` (or ``QAttention`` for the
packed Q/K/V projection when the three share one input quantization), with the student's calibrated
activation scale/zero point and per-channel weight codes; other quantized Linears run a float MatMul on
their 8-bit uniform codes dequantized in the graph (folded once at session start) or on their effective
float weights (non-uniform schemes), with any activation fake-quant as Q/DQ (per tensor or per input
channel); a uniform row/tensor word-embedding table is stored as
int8 codes + per-row scales.

>>> info = build_onnx(plain_model, meta, arrays, "out/model.onnx")   # {'integer': 72, 'qattention': 12, ...}
"""

from __future__ import annotations

import contextlib
import io
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from sdq.errors import SdqError
from sdq.export.onnx_dynamic import TokenQuant
from sdq.export.onnx_embedding import rewrite_gather
from sdq.export.onnx_graph import (
    ActQuant,
    LinearPlan,
    fusable_qkv,
    rewrite_attention,
    rewrite_linears,
)
from sdq.export.pack import codes_of, dequantize

OPSET = 17


def make_plans(plain: nn.Module, meta: dict, arrays: dict[str, np.ndarray]) -> dict[str, LinearPlan]:
    """A :class:`LinearPlan` for every Linear of ``plain`` that the student quantized."""
    plans = {}
    for name, mod in plain.named_modules():
        if not isinstance(mod, nn.Linear):
            continue
        key, a = f"{name}.weight", meta["acts"].get(name)
        packed = meta["tensors"].get(key)
        if packed is None and a is None:
            continue
        plan = LinearPlan(weight=mod.weight.detach().float().numpy())
        if a is not None and a["granularity"] == "tensor":
            plan.act = ActQuant(float(a["scale"][0]), int(a["zero_point"][0]), a["qmin"], a["qmax"])
        elif a is not None and a["granularity"] == "channel":  # (in,) along the input's last axis
            plan.act = ActQuant(np.asarray(a["scale"], np.float32), np.rint(a["zero_point"]).astype(np.int64),
                                a["qmin"], a["qmax"])
        elif a is not None and a["granularity"] == "token":  # each token's own range, at run time
            plan.act = TokenQuant(a["qmin"], a["qmax"], bool(a["symmetric"]))
        if packed is not None and packed.get("rotated"):  # codes and weight in the student's rotated basis
            plan.rotated = dequantize(packed, arrays, key).numpy()
        if packed is not None and packed["scheme"] == "uniform" and packed["bits"] <= 8:
            codes = codes_of(packed, arrays, key).numpy()  # (G, n) in sdq.quant's grouped view
            plan.grouped = (codes, arrays[f"{key}.scale"], arrays.get(f"{key}.zero_point"))  # + (G, 1) params
            if packed["granularity"] != "group":  # one scale per output row (or tensor): integer-GEMM ready
                out_f = mod.out_features
                plan.codes = codes.reshape(out_f, -1)
                plan.w_scale = np.broadcast_to(arrays[f"{key}.scale"].reshape(-1), (out_f,)).astype(np.float32)
                if f"{key}.zero_point" in arrays:
                    plan.w_zero_point = np.broadcast_to(arrays[f"{key}.zero_point"].reshape(-1), (out_f,))
        plans[name] = plan
    return plans


def _qkv_groups(plans: dict[str, LinearPlan]) -> dict[str, tuple[LinearPlan, LinearPlan, LinearPlan]]:
    groups = {}
    for name in plans:
        if name.endswith(".query"):
            pre = name[: -len(".query")]
            trio = tuple(plans.get(f"{pre}.{p}") for p in ("query", "key", "value"))
            if all(t is not None for t in trio):
                groups[pre] = trio
    return groups


def export_fp_onnx(plain: nn.Module, path: Path) -> None:
    """torch.onnx (TorchScript exporter) with dynamic batch/sequence axes and eager attention."""
    old = plain.config._attn_implementation
    plain.set_attn_implementation("eager")  # the fusions match eager attention's subgraph
    ids = torch.full((2, 8), 5, dtype=torch.long)
    mask = torch.ones_like(ids)
    axes = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}, "logits": {0: "batch"}}
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(plain.eval(), (ids, mask), str(path), input_names=["input_ids", "attention_mask"],
                              output_names=["logits"], dynamic_axes=axes, opset_version=OPSET, dynamo=False)
    except (RuntimeError, TypeError, ValueError, NotImplementedError) as exc:
        raise SdqError(f"ONNX export of {type(plain).__name__} failed ({type(exc).__name__}: {exc}); "
                       "use load_quantized(dir) (torch backend) instead of the ONNX model") from None
    finally:
        plain.set_attn_implementation(old)


def optimize_bert(src: Path, dst: Path, num_heads: int, hidden: int, packed_qkv: bool) -> None:
    """onnxruntime.transformers fusions for BERT-like encoders (packed Attention or MultiHeadAttention)."""
    import logging

    from onnxruntime.transformers import optimizer  # lazy: optional heavy runtime, only for the fusions
    from onnxruntime.transformers.fusion_options import FusionOptions  # lazy: as above

    opts = FusionOptions("bert")
    opts.use_multi_head_attention = not packed_qkv
    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()):
        m = optimizer.optimize_model(str(src), model_type="bert", num_heads=num_heads, hidden_size=hidden,
                                     optimization_options=opts, opt_level=0)
    m.save_model_to_file(str(dst))


def build_onnx(plain: nn.Module, meta: dict, arrays: dict[str, np.ndarray], path: str | Path) -> dict:
    """Write the integer ONNX model of an export to ``path``; returns counts of each kind of op written."""
    plans = make_plans(plain, meta, arrays)
    groups = _qkv_groups(plans)
    packed_qkv = bool(groups) and all(fusable_qkv(*t) for t in groups.values())
    cfg = plain.config
    with tempfile.TemporaryDirectory() as tmp:
        raw, opt = Path(tmp) / "raw.onnx", Path(tmp) / "opt.onnx"
        export_fp_onnx(plain, raw)
        optimize_bert(raw, opt, cfg.num_attention_heads, cfg.hidden_size, packed_qkv)
        model = onnx.load(str(opt))
    n_attention = sum(n.op_type == "Attention" for n in model.graph.node)
    info = {"qattention": 0}
    if packed_qkv and n_attention:
        info["qattention"] = rewrite_attention(model, groups)
        for trio in groups:
            for p in ("query", "key", "value"):
                plans.pop(f"{trio}.{p}")
    info.update(rewrite_linears(model, plans))
    word = next((k for k in meta["tensors"] if k.endswith("word_embeddings.weight")), None)
    info["int8_embedding"] = False
    if word is not None and meta["tensors"][word]["scheme"] == "uniform" \
            and meta["tensors"][word]["granularity"] in ("row", "channel", "tensor"):
        m = meta["tensors"][word]
        codes = codes_of(m, arrays, word).reshape(m["shape"]).numpy()
        scale = np.broadcast_to(arrays[f"{word}.scale"].reshape(-1), (m["shape"][0],))
        zp = arrays.get(f"{word}.zero_point")
        zp = None if zp is None else np.broadcast_to(zp.reshape(-1), (m["shape"][0],))
        if int(codes.min()) >= -128 and int(codes.max()) <= 127 or int(codes.min()) >= 0:
            info["int8_embedding"] = rewrite_gather(model, word, codes, scale, zp)
    onnx.save(model, str(path))
    return info
