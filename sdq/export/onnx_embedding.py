"""ONNX graph surgery for the word-embedding table: int8 codes + per-row scales in place of the float table.

>>> rewrite_gather(onnx_model, "roberta.embeddings.word_embeddings.weight", codes, scale)   # True if found
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def rewrite_gather(model: onnx.ModelProto, weight_name: str, codes: np.ndarray, scale: np.ndarray,
                   zero_point: np.ndarray | None = None) -> bool:
    """Replace a float embedding table by int8 codes (V, H) + per-row scale (V,) (+ zero point):
    ``Gather(table, ids)`` -> ``(Cast(Gather(codes, ids)) - Gather(zp, ids)) * Gather(scale, ids)``."""
    graph = model.graph
    users = [n for n in graph.node if n.op_type == "Gather" and n.input[0] == weight_name]
    if not users:
        return False
    dt = np.int8 if int(codes.min()) < 0 else np.uint8
    base = weight_name.removesuffix(".weight")
    inits = [numpy_helper.from_array(codes.astype(dt), f"{base}.codes"),
             numpy_helper.from_array(np.asarray(scale, np.float32).reshape(-1, 1), f"{base}.scale")]
    if zero_point is not None and np.any(zero_point):
        inits.append(numpy_helper.from_array(np.asarray(zero_point, np.float32).reshape(-1, 1), f"{base}.zp"))
    new_nodes = []
    for node in graph.node:
        if node not in users:
            new_nodes.append(node)
            continue
        ids, out, p = node.input[1], node.output[0], node.name
        new_nodes += [helper.make_node("Gather", [f"{base}.codes", ids], [f"{p}.q"], name=f"{p}/q"),
                      helper.make_node("Cast", [f"{p}.q"], [f"{p}.qf"], to=TensorProto.FLOAT, name=f"{p}/cast"),
                      helper.make_node("Gather", [f"{base}.scale", ids], [f"{p}.s"], name=f"{p}/s")]
        q = f"{p}.qf"
        if len(inits) == 3:
            new_nodes += [helper.make_node("Gather", [f"{base}.zp", ids], [f"{p}.z"], name=f"{p}/z"),
                          helper.make_node("Sub", [q, f"{p}.z"], [f"{p}.qz"], name=f"{p}/sub")]
            q = f"{p}.qz"
        new_nodes.append(helper.make_node("Mul", [q, f"{p}.s"], [out], name=f"{p}/mul"))
    keep = [t for t in graph.initializer if t.name != weight_name]
    del graph.node[:]
    graph.node.extend(new_nodes)
    del graph.initializer[:]
    graph.initializer.extend(keep + inits)
    return True
