"""Does the exported model compute what the fake-quantized student computes? Same batches, both models.

>>> res = check_agreement(student, load_quantized(out, backend="onnx"), batches, tol=0.1)
>>> res["max_logit_diff"], res["metric_diff"]      # raises SdqError when |metric diff| > tol (points)
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from sdq.errors import SdqError


def _accuracy_counts(logits: torch.Tensor, labels: torch.Tensor) -> tuple[int, int]:
    preds = logits.argmax(-1)  # (B,) or (B, T)
    valid = labels != -100
    return int(((preds == labels) & valid).sum()), int(valid.sum())


@torch.no_grad()
def check_agreement(student: nn.Module, exported: nn.Module, batches: Iterable[dict], tol: float = 0.1,
                    raise_on_fail: bool = True) -> dict:
    """Max |logit difference|, accuracy of both models (points; vs ``labels`` when batches have them, else
    vs the student's own predictions) and their difference; SdqError if it exceeds ``tol`` points."""
    student.eval()
    max_diff, n_batches = 0.0, 0
    hits_s = hits_e = total = agree = n_pred = 0
    for batch in batches:
        ids, mask = batch["input_ids"], batch.get("attention_mask")
        ls = student(input_ids=ids, attention_mask=mask).logits.float()
        le = exported(ids, mask).logits.float()
        if ls.shape != le.shape:
            raise SdqError(f"exported logits {tuple(le.shape)} vs student {tuple(ls.shape)}: not the same model head")
        labels = batch.get("labels")
        if labels is None:
            labels = ls.argmax(-1)
        if mask is not None and ls.dim() == 3:  # token logits: ignore padding
            labels = torch.where(mask.bool(), labels, torch.full_like(labels, -100))
            max_diff = max(max_diff, float(((ls - le).abs().amax(-1) * mask).max()))
        else:
            max_diff = max(max_diff, float((ls - le).abs().max()))
        hs, n = _accuracy_counts(ls, labels)
        he, _ = _accuracy_counts(le, labels)
        a, m = _accuracy_counts(le, torch.where(labels != -100, ls.argmax(-1), labels))
        hits_s, hits_e, total, agree, n_pred = hits_s + hs, hits_e + he, total + n, agree + a, n_pred + m
        n_batches += 1
    if not n_batches or not total:
        raise SdqError("check_agreement got no batches (or only padding); pass at least one labelled batch")
    acc_s, acc_e = 100.0 * hits_s / total, 100.0 * hits_e / total
    res = {"batches": n_batches, "examples": total, "max_logit_diff": max_diff, "metric": "accuracy",
           "student": acc_s, "exported": acc_e, "metric_diff": acc_e - acc_s,
           "prediction_agreement": 100.0 * agree / max(n_pred, 1), "tol": tol, "ok": abs(acc_e - acc_s) <= tol}
    if raise_on_fail and not res["ok"]:
        raise SdqError(f"exported model disagrees with the fake-quantized student: accuracy {acc_e:.2f} vs "
                       f"{acc_s:.2f} (diff {acc_e - acc_s:+.2f} pt > tol {tol}); max logit diff {max_diff:.3g}")
    return res
