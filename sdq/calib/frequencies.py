"""Token frequencies for per-token embedding bits, from the tokenizer or from a run's training data.

>>> freq = frequencies_for_run(cfg.token_bits, tokenizer, dm)    # (V,) float64
>>> assign_token_bits(model, cfg.token_bits, freq)
"""

from __future__ import annotations

import torch

from sdq.quant.config import TokenBitsConfig
from sdq.quant.token_bits import count_tokens, tokenizer_frequencies


def frequencies_for_run(tb: TokenBitsConfig, tokenizer, dm) -> torch.Tensor:
    """The frequencies ``tb.source`` asks for: tokenizer scores or counts over the task's training data
    (``dm``: a datamodule with ``train_dataloader()``)."""
    if tb.source == "tokenizer":
        return tokenizer_frequencies(tokenizer)
    return count_tokens(dm.train_dataloader(), len(tokenizer))
