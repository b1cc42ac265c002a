"""Self-distillation from a full-precision teacher into a quantized student (SDQ, O'Neill & Dutta 2023).

Knows tensors and HF module structure only, not how the student was quantized.

    crit = DistillLoss(ce=1.0, logits_kl=1.0, temperature=2.0, attn_out=1.0)
    cap_t = run_capture(teacher, batch, **crit.capture_kwargs)             # no_grad, detached
    cap_s = run_capture(student, batch, **crit.capture_kwargs, grad=True)
    total, parts = crit(cap_s, cap_t, batch["labels"], batch["attention_mask"])
    errs = layer_errors(student, teacher, batch); plot_layer_errors({"W8": errs}, "err.png")
"""

from sdq.distill.capture import Capture, attention_blocks, capture, run_capture
from sdq.distill.diagnostics import layer_errors, plot_layer_errors, relative_error
from sdq.distill.losses import (
    DistillLoss,
    attention_output_loss,
    attention_prob_kl,
    hidden_mse,
    logits_kl,
    task_loss,
)

__all__ = [
    "Capture", "DistillLoss", "attention_blocks", "attention_output_loss", "attention_prob_kl", "capture",
    "hidden_mse", "layer_errors", "logits_kl", "plot_layer_errors", "relative_error", "run_capture", "task_loss",
]
