"""Per-language evaluation: accumulate predictions, compute task metrics and teacher fidelity.

One :class:`LanguageAccumulator` per (split, language). Fidelity compares the student with a
reference model (the FP teacher) on the *same* examples: the share of equal predictions and the
mean KL(reference ‖ student), both far less noisy than accuracy on 500-example test sets.

>>> acc = LanguageAccumulator(head="seq_cls")
>>> acc.add(logits, labels, teacher_logits=t_logits)
>>> acc.summary("acc")  # {"metric": 71.2, "agree": 98.4, "kl": 0.003, "teacher_metric": 71.6, "n": 501}
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from sdq.data.metrics import compute_metric


def flatten_outputs(
    logits: torch.Tensor, labels: torch.Tensor, head: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Select the scored positions: all rows for sentence tasks, labelled tokens for token tasks.

    logits: (B, C) or (B, T, C); labels: (B,) or (B, T) with -100 on unlabelled tokens.
    Returns (N, C) logits and (N,) labels.
    """
    if head == "token_cls":
        keep = labels != -100  # (B, T)
        return logits[keep], labels[keep]
    return logits, labels


def predictions(logits: torch.Tensor, head: str) -> torch.Tensor:
    """Class ids (argmax) for classification; expected relevance score for ranking heads."""
    if head == "rank":
        probs = logits.float().softmax(-1)  # (N, C)
        grades = torch.arange(logits.shape[-1], dtype=probs.dtype, device=probs.device)
        return probs @ grades  # (N,)
    return logits.argmax(-1)


@dataclass
class LanguageAccumulator:
    """Collects predictions of one language/split; computes metric, teacher metric and fidelity."""

    head: str
    preds: list[torch.Tensor] = field(default_factory=list)
    labels: list[torch.Tensor] = field(default_factory=list)
    groups: list[torch.Tensor] = field(default_factory=list)
    teacher_preds: list[torch.Tensor] = field(default_factory=list)
    row_lengths: list[int] = field(default_factory=list)  # token tasks: labelled words per sentence
    agree: float = 0.0
    kl_sum: float = 0.0
    count: int = 0

    def add(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        group: torch.Tensor | None = None,
        teacher_logits: torch.Tensor | None = None,
    ) -> None:
        """Add one batch. logits (B, C) / (B, T, C); labels (B,) / (B, T); group (B,) or None."""
        flat, lab = flatten_outputs(logits.detach().float(), labels, self.head)
        if self.head == "token_cls":
            self.row_lengths.extend((labels != -100).sum(-1).tolist())
        self.preds.append(predictions(flat, self.head).cpu())
        self.labels.append(lab.cpu())
        if group is not None:
            self.groups.append(group.cpu())
        if teacher_logits is not None:
            t_flat, _ = flatten_outputs(teacher_logits.detach().float(), labels, self.head)
            self.teacher_preds.append(predictions(t_flat, self.head).cpu())
            self.agree += (flat.argmax(-1) == t_flat.argmax(-1)).sum().item()
            # KL(teacher || student) per item, summed: (N,)
            kl = F.kl_div(flat.log_softmax(-1), t_flat.log_softmax(-1), log_target=True, reduction="none")
            self.kl_sum += kl.sum(-1).sum().item()
            self.count += flat.shape[0]

    def summary(self, metric: str, label_names: tuple[str, ...] | None = None) -> dict[str, float]:
        """Metric (percent), and with a teacher: teacher metric, agreement (percent), mean KL."""
        if not self.preds:
            return {}
        preds, labels = torch.cat(self.preds), torch.cat(self.labels)
        groups = torch.cat(self.groups) if self.groups else None

        def score(p: torch.Tensor) -> float:
            if metric == "f1" and self.row_lengths:  # entity F1 needs sentence boundaries
                rows_p = [r.tolist() for r in p.split(self.row_lengths)]
                rows_l = [r.tolist() for r in labels.split(self.row_lengths)]
                return compute_metric(metric, rows_p, rows_l, label_names=label_names)
            return compute_metric(metric, p, labels, groups=groups, label_names=label_names)

        out = {"metric": score(preds), "n": int(labels.shape[0])}
        if self.count:
            out["teacher_metric"] = score(torch.cat(self.teacher_preds))
            out["agree"] = 100.0 * self.agree / self.count
            out["kl"] = self.kl_sum / self.count
        return out


def aggregate(per_lang: dict[str, dict[str, float]]) -> dict[str, float]:
    """Unweighted average over languages of every key present in all of them (XGLUE averages)."""
    if not per_lang:
        return {}
    keys = set.intersection(*(set(v) for v in per_lang.values())) - {"n"}
    return {k: sum(v[k] for v in per_lang.values()) / len(per_lang) for k in sorted(keys)}


def merge_accumulators(parts: list[LanguageAccumulator | None], head: str) -> LanguageAccumulator | None:
    """One accumulator holding the batches of ``parts`` (in order); None when all are None."""
    parts = [p for p in parts if p is not None]
    if not parts:
        return None
    out = LanguageAccumulator(head)
    for p in parts:
        out.preds += p.preds
        out.labels += p.labels
        out.groups += p.groups
        out.teacher_preds += p.teacher_preds
        out.row_lengths += p.row_lengths
        out.agree += p.agree
        out.kl_sum += p.kl_sum
        out.count += p.count
    return out


def gather_accumulators(
    accs: dict[str, LanguageAccumulator | None], head: str
) -> dict[str, LanguageAccumulator | None]:
    """DDP: every rank gets the accumulators of all ranks merged (rank order), so metrics are computed
    on the whole split exactly as in one process. A no-op without an initialized process group."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return accs
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, accs)  # CPU tensors inside: pickled
    return {lang: merge_accumulators([g.get(lang) for g in gathered], head) for lang in accs}
