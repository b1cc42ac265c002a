"""Export a fake-quantized student to a real integer model: packed at its bit-widths, reloadable with no
training code, INT8 onnxruntime inference on CPU, agreement checked against the student.

>>> report = export_quantized(student, "export/run")             # sizes per module kind; writes model.onnx
>>> model = load_quantized("export/run")                          # torch, dequantized (bit-exact weights)
>>> fast = load_quantized("export/run", backend="onnx")           # int8 onnxruntime on CPU
>>> check_agreement(student, fast, batches, tol=0.1)              # SdqError when accuracy differs more

The dir also loads with plain transformers (``model.safetensors``: dequantized weights, written only
when it reproduces the student, :mod:`sdq.export.hf_copy`) and onnxruntime, with the run's tokenizer and
a model card.

CLI: ``python -m sdq.export ckpt=<run dir> out=<dir>`` (its checkpoints/best.ckpt, else last.ckpt).
"""

from sdq.export.agreement import check_agreement
from sdq.export.loader import load_quantized, read_export, verify_dir
from sdq.export.pack import dequantize, pack_bits, pack_tensor, unpack_bits
from sdq.export.report import ExportReport, module_kind
from sdq.export.writer import export_quantized

__all__ = ["ExportReport", "check_agreement", "dequantize", "export_quantized", "load_quantized", "module_kind",
           "pack_bits", "pack_tensor", "read_export", "unpack_bits", "verify_dir"]
