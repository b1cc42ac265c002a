"""The int8 tools a user would pick instead of sdq, applied to the FP model (the teacher): baselines for
speed and accuracy of an export.

>>> peer = torch_dynamic_int8(teacher)                                  # torch.ao quantize_dynamic, qint8
>>> ort = OrtModel(ort_dynamic_int8(teacher, "peers/ort_dynamic.onnx"), threads=2)
>>> ort(input_ids, attention_mask).logits
"""

from __future__ import annotations

import copy
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn


def torch_dynamic_int8(fp_model: nn.Module) -> nn.Module:
    """``torch.ao.quantization.quantize_dynamic`` of every Linear (int8 weights, dynamic int8 activations)
    on a copy of ``fp_model``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao deprecation notices: still the stock torch int8 path
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(fp_model).eval(), {nn.Linear},
                                                      dtype=torch.qint8)


def ort_dynamic_int8(fp_model: nn.Module, path: str | Path) -> Path:
    """Plain ONNX export of ``fp_model`` + onnxruntime ``quantize_dynamic`` (QInt8 weights) written to ``path``."""
    from onnxruntime.quantization import QuantType, quantize_dynamic  # lazy: optional heavy runtime

    from sdq.export.onnx_build import export_fp_onnx  # lazy: imports onnx, only the ONNX peer needs it

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "fp32.onnx"
        export_fp_onnx(fp_model, raw)
        quantize_dynamic(str(raw), str(path), weight_type=QuantType.QInt8)
    return path
