"""An onnxruntime CPU session behind the HF call signature ``model(input_ids, attention_mask).logits``.

>>> model = OrtModel("export/xnli_w8a8/model.onnx", threads=2)
>>> logits = model(input_ids, attention_mask).logits          # torch.Tensor (B, C) or (B, T, C)
>>> clf = pipeline("text-classification", model=OrtModel(d / "model.onnx"), tokenizer=str(d))  # transformers

The wrapper carries what a transformers ``pipeline`` reads from a model (``config`` from the export dir's
config.json: ``id2label``; ``device``; ``can_generate``) and answers a ``ModelOutput``.

On x86 CPUs without VNNI, onnxruntime's u8 x s8 GEMM multiplies byte pairs with ``vpmaddubsw``, whose
int16 sums saturate (255 * 127 * 2 > 32767): measured here, a 4096 x 384 x 1536 MatMulIntegerToFloat
on uniform codes was off by up to 136,265 (exact values up to ~2e6), and by 24,814 on codes around a
mid zero point. Such sessions get the same weights as u8 (codes + 128, zero point + 128: the same
integers, ``w - z_w`` unchanged), whose kernel widens to int16 first: exact (faster in that standalone
product, ~14 % slower in the whole me5_small model; ``u8_weights=False`` keeps the saturating kernel).
Weights whose codes lie within [-64, 64] (7-bit weights, ``quant=w7a8_int8``) keep the fast signed kernel:
their pair sums stay within 2 * 255 * 64 = 32640, exact without VNNI.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from sdq.errors import SdqError
from sdq.int8.cpu import cpu_has_vnni, s8_exact
from sdq.int8.ort_gemm import session_options


def s8_weights_to_u8(model) -> int:
    """Rewrite the int8 weights (and their zero points) of MatMulIntegerToFloat / QAttention nodes as uint8
    + 128, in place; returns the number of nodes rewritten. ``w - z_w`` is unchanged, so are the results.
    Weights within [-64, 64] (:func:`~sdq.int8.cpu.s8_exact`) are exact as int8 and stay."""
    from onnx import TensorProto, numpy_helper  # lazy: optional heavy dependency, only for ONNX exports

    inits = {t.name: t for t in model.graph.initializer}
    slots = {"MatMulIntegerToFloat": (1, 5), "QAttention": (1, 7)}  # (weight, weight zero point) inputs
    done = 0
    for node in model.graph.node:
        if node.op_type not in slots or node.domain != "com.microsoft":
            continue
        w_i, z_i = slots[node.op_type]
        names = [node.input[i] if len(node.input) > i else "" for i in (w_i, z_i)]
        if not all(n in inits and inits[n].data_type == TensorProto.INT8 for n in names):
            continue
        if s8_exact(numpy_helper.to_array(inits[names[0]])):
            continue
        for n in names:
            u8 = (numpy_helper.to_array(inits[n]).astype(np.int16) + 128).astype(np.uint8)
            inits[n].CopyFrom(numpy_helper.from_array(u8, n))
        done += 1
    return done


def ort_session(path: str | Path, threads: int | None = None, u8_weights: bool | None = None):
    """A CPU InferenceSession with all graph optimizations and ``threads`` intra-op threads that sleep when
    idle (:func:`sdq.int8.ort_gemm.session_options`). ``u8_weights``: rewrite int8 weights as uint8
    (:func:`s8_weights_to_u8`); None = where the CPU has no VNNI (see the module doc)."""
    import onnxruntime as ort  # lazy: optional heavy runtime, only for ONNX exports

    so = session_options(threads)
    if u8_weights is None:
        u8_weights = not cpu_has_vnni()
    source: str | bytes = str(path)
    if u8_weights:
        import onnx  # lazy: optional heavy dependency, only to rewrite weights

        try:
            model = onnx.load(str(path))
        except Exception as exc:  # noqa: BLE001 - protobuf decode errors share no useful base
            raise SdqError(f"onnx cannot read {path} ({type(exc).__name__}: {str(exc)[:200]}); "
                           "re-export it with `python -m sdq.export`") from None
        if s8_weights_to_u8(model):
            source = model.SerializeToString()
    try:
        return ort.InferenceSession(source, so, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime's pybind errors share no useful base
        raise SdqError(f"onnxruntime cannot load {path} ({type(exc).__name__}: {str(exc)[:200]}); "
                       "re-export it with `python -m sdq.export`") from None


class OrtModel(nn.Module):
    """Inference-only wrapper (no parameters); inputs may be torch tensors or numpy arrays."""

    def __init__(self, path: str | Path, threads: int | None = None, num_labels: int | None = None,
                 u8_weights: bool | None = None, config=None):
        super().__init__()
        self.path, self.num_labels = str(path), num_labels
        self.session = ort_session(path, threads, u8_weights)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.config = config if config is not None else _dir_config(Path(path).parent)
        if self.num_labels is None and self.config is not None:
            self.num_labels = self.config.num_labels

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def can_generate(self) -> bool:
        return False

    def forward(self, input_ids, attention_mask=None, **_):
        ids = np.asarray(input_ids.cpu() if torch.is_tensor(input_ids) else input_ids, dtype=np.int64)
        if attention_mask is None:
            attention_mask = np.ones_like(ids)
        mask = np.asarray(attention_mask.cpu() if torch.is_tensor(attention_mask) else attention_mask, np.int64)
        feed = {"input_ids": ids, "attention_mask": mask}
        (logits,) = self.session.run(["logits"], {k: v for k, v in feed.items() if k in self.input_names})
        from transformers.modeling_outputs import SequenceClassifierOutput  # lazy: heavy, as for the session

        return SequenceClassifierOutput(logits=torch.from_numpy(logits))  # .logits and ["logits"] (pipelines)

    def extra_repr(self) -> str:
        return f"path={self.path}"


def _dir_config(d: Path):
    """The HF config of the export dir holding the ONNX file (None when it has none)."""
    if not (d / "config.json").is_file():
        return None
    from transformers import AutoConfig  # lazy: heavy, only pipelines read it

    try:
        return AutoConfig.from_pretrained(str(d))
    except (OSError, ValueError, KeyError, TypeError):
        return None
