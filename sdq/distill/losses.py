"""Distillation losses between a full-precision teacher and a (fake-quantized) student.

Pure tensor functions plus :class:`DistillLoss`, which combines them from weights (SDQ: CE on labels
+ KL on softened logits + per-layer self-attention output loss). Masks are (B, T) with 1 = real token.

>>> loss = DistillLoss(ce=1.0, logits_kl=1.0, attn_out=1.0)
>>> total, parts = loss(student_capture, teacher_capture, labels, batch["attention_mask"])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sdq.errors import SdqConfigError

if TYPE_CHECKING:
    from sdq.distill.capture import Capture

KINDS = ("mse", "kl", "cosine")
_EPS = 1e-12


def _token_mask(mask: Tensor | None, like: Tensor) -> Tensor:
    """(B, T) float mask matching ``like`` (B, T, ...); all ones when ``mask`` is None."""
    if mask is None:
        return like.new_ones(like.shape[:2])
    return mask.to(like.dtype).reshape(like.shape[:2])


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of per-token ``values`` (B, T) over tokens where ``mask`` (B, T) is 1."""
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


def _kl_rows(p_log_teacher: Tensor, p_log_student: Tensor) -> Tensor:
    """sum_c p_t (log p_t - log p_s) over the last dim, from log-probabilities."""
    return F.kl_div(p_log_student, p_log_teacher, log_target=True, reduction="none").sum(-1)


def logits_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0,
              mask: Tensor | None = None) -> Tensor:
    """tau^2 * KL(softmax(z_t/tau) || softmax(z_s/tau)), batch-mean.

    Sequence logits (B, C): ``tau^2 / B * sum_b sum_c p_t log(p_t / p_s)``.
    Token logits (B, T, C): the per-token KL averaged over positions where ``mask`` (B, T) is 1.

    >>> logits_kl(torch.randn(4, 3), torch.randn(4, 3), temperature=2.0)
    """
    tau = float(temperature)
    kl = _kl_rows(F.log_softmax(teacher_logits / tau, -1), F.log_softmax(student_logits / tau, -1))
    if kl.dim() == 1:  # (B,)
        return kl.mean() * tau**2
    return _masked_mean(kl, _token_mask(mask, kl)) * tau**2  # kl: (B, T)


def _pairs(n_student: int, n_teacher: int, layer_map: Sequence[tuple[int, int]] | None) -> list[tuple[int, int]]:
    if layer_map is None:
        if n_student != n_teacher:
            raise SdqConfigError(f"distillation: student has {n_student} layers, teacher {n_teacher}; "
                                 "pass layer_map=[(student_layer, teacher_layer), ...]")
        return [(i, i) for i in range(n_student)]
    pairs = [(int(s), int(t)) for s, t in layer_map]
    if not pairs or any(not (-n_student <= s < n_student and -n_teacher <= t < n_teacher) for s, t in pairs):
        raise SdqConfigError(f"distillation: layer_map {pairs} is empty or out of range "
                             f"(student {n_student} layers, teacher {n_teacher}); use valid indices")
    return pairs


def _per_token(s: Tensor, t: Tensor, kind: str) -> Tensor:
    """Per-token loss (B, T) between (B, T, H) tensors."""
    if kind == "mse":
        return (s - t).pow(2).mean(-1)
    if kind == "kl":
        return _kl_rows(F.log_softmax(t, -1), F.log_softmax(s, -1))
    if kind == "cosine":
        return 1.0 - F.cosine_similarity(s, t, dim=-1, eps=1e-8)
    raise SdqConfigError(f"distillation: attention-output loss kind {kind!r} unknown; use one of {KINDS}")


def attention_output_loss(student_outs: Sequence[Tensor], teacher_outs: Sequence[Tensor],
                          mask: Tensor | None = None, kind: str = "mse",
                          layer_map: Sequence[tuple[int, int]] | None = None) -> Tensor:
    """Mean over layer pairs (s, t) of a token loss between self-attention block outputs (B, T, H).

    With m the (B, T) token mask and N = sum m, per pair:
    - ``mse``:    1/(N H) sum_{b,t} m_bt ||a^S_bt - a^T_bt||^2
    - ``kl``:     1/N sum_{b,t} m_bt KL(softmax(a^T_bt) || softmax(a^S_bt)), softmax over the hidden dim H
      (the SDQ paper's attention-output KL: each token's output vector read as a distribution over H)
    - ``cosine``: 1/N sum_{b,t} m_bt (1 - cos(a^S_bt, a^T_bt))
    ``layer_map`` lists (student_layer, teacher_layer) pairs; default pairs layer i with layer i.

    >>> attention_output_loss(cap_s.attn_outs, cap_t.attn_outs, batch["attention_mask"], kind="mse")
    """
    pairs = _pairs(len(student_outs), len(teacher_outs), layer_map)
    losses = []
    for s, t in pairs:
        a_s, a_t = student_outs[s], teacher_outs[t]  # (B, T, H)
        losses.append(_masked_mean(_per_token(a_s, a_t, kind), _token_mask(mask, a_s)))
    return torch.stack(losses).mean()


def hidden_mse(student_hidden: Sequence[Tensor], teacher_hidden: Sequence[Tensor],
               mask: Tensor | None = None, layer_map: Sequence[tuple[int, int]] | None = None) -> Tensor:
    """Layer-output MSE: 1/|pairs| sum_(s,t) 1/(N H) sum_{b,t} m_bt ||h^S_s - h^T_t||^2 on (B, T, H).

    >>> hidden_mse(cap_s.hidden, cap_t.hidden, batch["attention_mask"])
    """
    return attention_output_loss(student_hidden, teacher_hidden, mask, "mse", layer_map)


def attention_prob_kl(student_probs: Tensor | Sequence[Tensor], teacher_probs: Tensor | Sequence[Tensor],
                      mask: Tensor | None = None,
                      layer_map: Sequence[tuple[int, int]] | None = None) -> Tensor:
    """KL between attention maps (B, NH, T, T), rows = queries, averaged over heads and valid query rows.

    Per layer: 1/(NH N) sum_{b,h,i: m_bi=1} sum_j P^T_bhij (log P^T_bhij - log P^S_bhij), probabilities
    clamped at 1e-12 inside the logs (masked keys have P = 0 in both; 0 * log 0 = 0). Rows are first
    renormalised to sum 1, since fake-quantized probability maps need not be (else the "KL" can go
    negative). Lists of per-layer maps are averaged over layer pairs like :func:`attention_output_loss`.
    Note: a student in training mode returns maps after attention dropout (zeroed entries cost
    ~27.6 * P^T each); set ``attention_probs_dropout_prob=0`` on the student when using this loss.

    >>> attention_prob_kl(cap_s.attn_probs, cap_t.attn_probs, batch["attention_mask"])
    """
    if isinstance(student_probs, Tensor):
        student_probs, teacher_probs = [student_probs], [teacher_probs]
    pairs = _pairs(len(student_probs), len(teacher_probs), layer_map)
    losses = []
    for s, t in pairs:
        p_s, p_t = (p / p.sum(-1, keepdim=True).clamp_min(_EPS)  # (B, NH, T, T), rows sum to 1
                    for p in (student_probs[s], teacher_probs[t]))
        kl = (p_t * (p_t.clamp_min(_EPS).log() - p_s.clamp_min(_EPS).log())).sum(-1).mean(1)  # (B, T)
        losses.append(_masked_mean(kl, _token_mask(mask, kl)))
    return torch.stack(losses).mean()


def task_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy ignoring label -100 ((B, C) with (B,) labels or (B, T, C) with (B, T));
    MSE for float labels with a single output (regression). A batch with no label at all (only unlabeled
    distillation examples) gives 0 (with a gradient path), not NaN."""
    if labels.is_floating_point():
        return F.mse_loss(logits.squeeze(-1), labels.to(logits.dtype))
    if not bool((labels != -100).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)


def _number(name: str, value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise SdqConfigError(f"DistillLoss: {name}={value!r} is not a number; use e.g. {name}=1.0") from None


class DistillLoss(nn.Module):
    """Weighted sum of CE (labels), logits KL, attention-output, attention-prob and hidden losses.

    Parts with weight 0 are neither computed nor need capturing (see :attr:`needs`).

    >>> crit = DistillLoss(ce=1.0, logits_kl=1.0, attn_out=1.0, attn_out_kind="mse")
    >>> with capture(teacher, **crit.capture_kwargs) as cap_t, torch.no_grad():
    ...     cap_t.logits = teacher(**batch).logits
    >>> total, parts = crit(cap_s, cap_t, batch["labels"], batch["attention_mask"])
    """

    def __init__(self, ce: float = 1.0, logits_kl: float = 0.0, temperature: float = 2.0,
                 attn_out: float = 0.0, attn_out_kind: str = "mse", attn_prob: float = 0.0,
                 hidden: float = 0.0, layer_map: Sequence[tuple[int, int]] | None = None):
        super().__init__()
        weights = {"ce": ce, "logits_kl": logits_kl, "attn_out": attn_out, "attn_prob": attn_prob, "hidden": hidden}
        weights = {name: _number(name, w) for name, w in weights.items()}
        for name, w in weights.items():
            if w < 0:
                raise SdqConfigError(f"DistillLoss: weight {name}={w:g} is negative; use a weight >= 0")
        if attn_out_kind not in KINDS:
            raise SdqConfigError(f"DistillLoss: attn_out_kind={attn_out_kind!r} unknown; use one of {KINDS}")
        temperature = _number("temperature", temperature)
        if temperature <= 0:
            raise SdqConfigError(f"DistillLoss: temperature={temperature:g} must be > 0")
        self.weights = weights
        self.temperature = temperature
        self.attn_out_kind = attn_out_kind
        self.layer_map = [tuple(p) for p in layer_map] if layer_map is not None else None

    @property
    def needs(self) -> set[str]:
        """Captures required beyond logits: a subset of {"attn_out", "attn_prob", "hidden"}."""
        return {k for k in ("attn_out", "attn_prob", "hidden") if self.weights[k] > 0}

    @property
    def capture_kwargs(self) -> dict[str, bool]:
        """Keyword arguments for :func:`sdq.distill.capture.capture` matching :attr:`needs`."""
        return {k: k in self.needs for k in ("attn_out", "attn_prob", "hidden")}

    def forward(self, student: Capture, teacher: Capture | None, labels: Tensor | None = None,
                mask: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Return (total, {part: detached value}) for the parts with weight > 0."""
        w, parts = self.weights, {}
        if w["ce"] > 0 and labels is not None:
            parts["ce"] = task_loss(student.logits, labels)
        if teacher is not None:
            if w["logits_kl"] > 0:
                parts["logits_kl"] = logits_kl(student.logits, teacher.logits, self.temperature, mask)
            if w["attn_out"] > 0:
                parts["attn_out"] = attention_output_loss(_need(student, "attn_outs"), _need(teacher, "attn_outs"),
                                                          mask, self.attn_out_kind, self.layer_map)
            if w["attn_prob"] > 0:
                parts["attn_prob"] = attention_prob_kl(_need(student, "attn_probs"), _need(teacher, "attn_probs"),
                                                       mask, self.layer_map)
            if w["hidden"] > 0:
                parts["hidden"] = hidden_mse(_need(student, "hidden"), _need(teacher, "hidden"), mask,
                                             self.layer_map)
        if not parts:
            raise SdqConfigError("DistillLoss: no part computed (all weights 0, or no labels/teacher); "
                                 "set ce>0 with labels or a distillation weight with a teacher")
        total = sum(w[k] * v for k, v in parts.items())
        return total, {k: v.detach() for k, v in parts.items()}


def _need(cap: Capture, field: str) -> list[Tensor]:
    values = getattr(cap, field)
    if not values:
        raise SdqConfigError(f"DistillLoss: capture has no {field}; capture with "
                             f"{field.rstrip('s')}=True (see DistillLoss.capture_kwargs)")
    return values
