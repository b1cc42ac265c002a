"""An onnxruntime CPU session behind the HF call signature ``model(input_ids, attention_mask).logits``.

>>> model = OrtModel("export/xnli_w8a8/model.onnx", threads=2)
>>> logits = model(input_ids, attention_mask).logits          # torch.Tensor (B, C) or (B, T, C)
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

from sdq.errors import SdqError


def ort_session(path: str | Path, threads: int | None = None):
    """A CPU InferenceSession with all graph optimizations and ``threads`` intra-op threads that sleep when
    idle (onnxruntime's default spin-wait kept the cores busy after each run and, measured side by side,
    halved torch's batch-1 speed in the same process)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads or torch.get_num_threads())
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime's pybind errors share no useful base
        raise SdqError(f"onnxruntime cannot load {path} ({type(exc).__name__}: {str(exc)[:200]}); "
                       "re-export it with `python -m sdq.export`") from None


class OrtModel(nn.Module):
    """Inference-only wrapper (no parameters); inputs may be torch tensors or numpy arrays."""

    def __init__(self, path: str | Path, threads: int | None = None, num_labels: int | None = None):
        super().__init__()
        self.path, self.num_labels = str(path), num_labels
        self.session = ort_session(path, threads)
        self.input_names = [i.name for i in self.session.get_inputs()]

    def forward(self, input_ids, attention_mask=None, **_) -> SimpleNamespace:
        ids = np.asarray(input_ids.cpu() if torch.is_tensor(input_ids) else input_ids, dtype=np.int64)
        if attention_mask is None:
            attention_mask = np.ones_like(ids)
        mask = np.asarray(attention_mask.cpu() if torch.is_tensor(attention_mask) else attention_mask, np.int64)
        feed = {"input_ids": ids, "attention_mask": mask}
        (logits,) = self.session.run(["logits"], {k: v for k, v in feed.items() if k in self.input_names})
        return SimpleNamespace(logits=torch.from_numpy(logits))

    def extra_repr(self) -> str:
        return f"path={self.path}"
