"""The copy of an export that plain ``transformers`` loads: ``model.safetensors`` in Hugging Face parameter
naming holding the dequantized weights (the student's fake-quantized weights, fp32), written only when
``AutoModelFor….from_pretrained(dir)`` / ``pipeline(..., model=dir)`` then give the student's predictions.

Rule (``hf_copy="auto"``): a weight-only student *is* its dequantized copy: written. A student that also
quantizes activations (or attention) computes something the copy does not: the copy's prediction
agreement with the student is measured on the check batches and the copy is written only at
>= :data:`MIN_AGREEMENT` %; with no check batches (``check=false``) it is not written.
``hf_copy=True`` writes it regardless, ``False`` never. Without the copy the dir has no
``model.safetensors``: transformers raises ``OSError: Error no file named model.safetensors ...`` (never
random weights), and ``config.json`` (``sdq_export``) and ``README.md`` say why and how to load it.

>>> d = decide(student, plain, quantizes_acts=True, batches=dev_batches, mode="auto")
>>> d.written, d.agreement, d.reason
(True, 99.6, 'prediction agreement 99.60 % >= 99 % on 512 check examples')
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import torch

HF_WEIGHTS = "model.safetensors"
MIN_AGREEMENT = 99.0  # percent of the student's predictions the transformers copy must reproduce
SDQ_LOADER = "sdq.export.load_quantized(dir, backend='int8')"


@dataclass
class CopyDecision:
    """Whether ``model.safetensors`` (the transformers copy) is written, and why."""

    written: bool
    reason: str
    agreement: float | None = None  # percent of equal predictions, copy vs student, on the check batches
    examples: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    def config_note(self) -> dict:
        """The ``sdq_export`` entry of config.json."""
        if self.written:
            return {"transformers_weights": "dequantized", "agreement_with_student": self.agreement,
                    "check_examples": self.examples, "note": "model.safetensors holds the dequantized quantized "
                    "weights (fp32); activation quantization is not applied. " + self.reason,
                    "packed_weights": "sdq_packed.safetensors", "exact_loader": SDQ_LOADER}
        return {"transformers_weights": None, "agreement_with_student": self.agreement,
                "check_examples": self.examples, "note": "no model.safetensors: transformers cannot load this "
                f"export ({self.reason}); load it with {SDQ_LOADER} or onnxruntime (model.onnx)",
                "packed_weights": "sdq_packed.safetensors", "exact_loader": SDQ_LOADER}


@torch.no_grad()
def prediction_agreement(reference: Callable, model: Callable, batches: Iterable[dict]) -> tuple[float, int]:
    """(percent of equal argmax predictions, number of predictions) of ``model`` vs ``reference``; token
    logits count labelled positions (``labels != -100``), else unpadded ones."""
    same = n = 0
    for b in batches:
        ids, mask = b["input_ids"], b.get("attention_mask")
        r = reference(input_ids=ids, attention_mask=mask).logits.argmax(-1)
        m = model(input_ids=ids, attention_mask=mask).logits.argmax(-1)
        valid = torch.ones_like(r, dtype=torch.bool)
        if r.dim() == 2:  # (B, T): token predictions
            labels = b.get("labels")
            valid = labels != -100 if labels is not None and labels.shape == r.shape else \
                (mask.bool() if mask is not None else valid)
        same += int(((r == m) & valid).sum())
        n += int(valid.sum())
    return (100.0 * same / n if n else float("nan")), n


def decide(student: Callable, plain: Callable, quantizes_acts: bool, batches: list[dict] | None,
           mode: bool | str = "auto") -> CopyDecision:
    """Apply the module's rule; measures ``plain`` (the dequantized model) vs ``student`` on ``batches``."""
    if mode is False:
        return CopyDecision(False, "hf_copy=false")
    agreement, n = prediction_agreement(student, plain, batches) if batches else (None, 0)
    where = f"on {n} check examples" if n else "(not measured: no check batches)"
    shown = f"{agreement:.2f} %" if agreement is not None else "n/a"
    if not quantizes_acts:
        return CopyDecision(True, f"weight-only quantization: the copy computes the student's function "
                                  f"(agreement {shown} {where})", agreement, n)
    if mode is True:
        return CopyDecision(True, f"hf_copy=true: written without activation quantization (agreement {shown} "
                                  f"{where})", agreement, n)
    if agreement is None:
        return CopyDecision(False, "the student quantizes activations and no check batches measured the copy's "
                                   "agreement (check=false); hf_copy=true writes it anyway")
    if agreement >= MIN_AGREEMENT:
        return CopyDecision(True, f"prediction agreement {agreement:.2f} % >= {MIN_AGREEMENT:g} % {where}",
                            agreement, n)
    return CopyDecision(False, f"prediction agreement {agreement:.2f} % < {MIN_AGREEMENT:g} % {where}: without the "
                               "student's activation quantization the copy is a different model", agreement, n)
