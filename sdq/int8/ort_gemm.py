"""Exact W8A8 integer GEMM through onnxruntime's ``MatMulIntegerToFloat`` (uint8 activations x uint8 weights
-> int32 -> fp32): the kernel of :class:`~sdq.int8.Int8Linear` for 8-bit weight codes on x86 CPUs without
VNNI (7-bit ones run torch's oneDNN kernel, :mod:`sdq.int8.onednn_gemm`).

There ``torch._int_mm`` has no fast kernel (a scalar loop), and the u8 x s8 kernels of oneDNN, FBGEMM and
onnxruntime multiply byte pairs with ``vpmaddubsw``, whose int16 pair sums saturate above 32767. The
weights go in as ``codes + 128`` (zero point 128: the same integers), whose u8 x u8 kernel widens to int16
and sums in int32 (``vpmaddwd``): exact on any CPU.

One small session per weight computes, from the fp32 input, the student's codes and their product with
the weight codes::

    a = QuantizeLinear(x * inv, scale=1, zero_point=z - qmin)   # clamp(round(x * (1/s)) + z) - qmin, u8
    y = MatMulIntegerToFloat(a, w + 128, 1, 1, z - qmin, 128)  # sum (c - z) w: exact int32, then fp32

``x * inv`` is the student's fp32 product and QuantizeLinear with scale 1 rounds half to even like
``torch.round``, so the codes are the student's, bit for bit; unit scales make the int32 -> fp32 step a
plain conversion (exact below 2^24). The weight is a constant that onnxruntime packs once::

    g = OrtIntGemm(codes, inv=1 / s_x, a_zero=z - qmin, levels=qmax - qmin)   # codes (N, K) int8
    acc = g(x)                                    # x (M, K) fp32 -> (M, N) fp32 exact integers
"""

from __future__ import annotations

import functools

import numpy as np
import torch


@functools.cache
def ort_available() -> bool:
    """True when onnxruntime imports (it is a dependency of sdq; a trimmed install may lack it); asked once."""
    try:
        import onnxruntime  # noqa: F401  # lazy: optional heavy runtime, probed once
    except ImportError:
        return False
    return True


def session_options(threads: int | None = None, optimize: bool = True):
    """CPU SessionOptions with ``threads`` intra-op threads (default: torch's) that sleep when idle
    (onnxruntime's default spin-wait kept the cores busy after each run and, measured side by side, halved
    torch's batch-1 speed in the same process); all graph optimizations, or none."""
    import onnxruntime as ort  # lazy: optional heavy runtime, only where a session is built

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads or torch.get_num_threads())
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


def _graph(codes: torch.Tensor, inv: float, a_zero: int, levels: int) -> bytes:
    from onnx import (  # lazy: optional heavy dependency, only to build a graph
        TensorProto,
        helper,
        numpy_helper,
    )

    n, k = codes.shape
    inits = [numpy_helper.from_array(np.array(a_zero, np.uint8), "za"),
             numpy_helper.from_array(np.array(inv, np.float32), "inv"),
             numpy_helper.from_array(np.array(1.0, np.float32), "one"),
             numpy_helper.from_array((codes.t().to(torch.int16) + 128).to(torch.uint8).numpy(), "B"),  # (K, N)
             numpy_helper.from_array(np.array(128, np.uint8), "zb")]
    nodes = [helper.make_node("Mul", ["X", "inv"], ["y"]),  # (M, K) fp32, the student's x * (1/s)
             helper.make_node("QuantizeLinear", ["y", "one", "za"], ["a"])]  # round half even + z - qmin
    if levels < 255:  # fewer than 8 bits: clamp the codes to [0, qmax - qmin]
        inits += [numpy_helper.from_array(np.array(0, np.uint8), "lo"),
                  numpy_helper.from_array(np.array(levels, np.uint8), "hi")]
        nodes.append(helper.make_node("Clip", ["a", "lo", "hi"], ["a_clip"]))
    nodes.append(helper.make_node("MatMulIntegerToFloat", [nodes[-1].output[0], "B", "one", "one", "za", "zb"],
                                  ["Y"], domain="com.microsoft"))  # (M, N) exact integers in fp32
    graph = helper.make_graph(nodes, "int_gemm", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["M", k])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", n])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    return model.SerializeToString()


class OrtIntGemm:
    """``(c - z) @ codes^T`` (exact integers, fp32) for one weight and input quantizer, on onnxruntime's
    u8 x u8 kernel; not a Module.

    ``threads`` intra-op threads (default: torch's) that sleep between GEMMs, so torch's ops keep the
    cores. No graph rewrites: the session runs the nodes as written.
    """

    def __init__(self, codes: torch.Tensor, inv: float, a_zero: int, levels: int = 255,
                 threads: int | None = None):
        import onnxruntime as ort  # lazy: optional heavy runtime, only where a session is built

        if codes.dtype != torch.int8 or codes.dim() != 2:
            raise ValueError(f"OrtIntGemm needs (N, K) int8 codes, got {tuple(codes.shape)} {codes.dtype}")
        if not (0 <= a_zero <= levels <= 255):
            raise ValueError(f"input zero point {a_zero} / {levels + 1} levels do not fit uint8 [0, 255]")
        self.session = ort.InferenceSession(_graph(codes.cpu(), float(inv), int(a_zero), int(levels)),
                                            session_options(threads, optimize=False),
                                            providers=["CPUExecutionProvider"])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # (M, K) fp32 -> (M, N) fp32
        (y,) = self.session.run(None, {"X": x.detach().contiguous().numpy()})
        return torch.from_numpy(y)
