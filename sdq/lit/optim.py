"""AdamW with linear warm-up and linear decay, the usual recipe for fine-tuning encoders.

>>> cfg = build_optimizer(model, lr=2e-5, weight_decay=0.01, warmup_ratio=0.1, total_steps=1000)
>>> cfg["optimizer"], cfg["lr_scheduler"]["interval"]
(AdamW (...), 'step')
"""

from __future__ import annotations

import torch
from torch import nn

NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")


def build_optimizer(
    model: nn.Module, lr: float, weight_decay: float, warmup_ratio: float, total_steps: float
) -> dict:
    """AdamW over trainable params (no decay on biases/LayerNorm/quantizer steps) + linear schedule."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_weight = name.endswith("weight") and not any(n in name for n in NO_DECAY)
        (decay if is_weight and param.ndim > 1 else no_decay).append(param)
    params = decay + no_decay
    on_gpu = bool(params) and all(p.is_cuda for p in params)
    optimizer = torch.optim.AdamW(  # fused on GPU: one kernel set for all params, no per-tensor launches
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr,
        fused=True if on_gpu else None,
    )
    total = max(1, int(total_steps)) if total_steps != float("inf") else 1
    warmup = int(total * warmup_ratio)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
