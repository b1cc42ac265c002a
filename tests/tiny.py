"""Tiny random encoders shared by the quantization tests (2 layers, hidden 32, vocabulary 120)."""

from __future__ import annotations

import torch
from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification

SMALL = {"vocab_size": 120, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
         "intermediate_size": 64, "max_position_embeddings": 40}


def xlmr() -> XLMRobertaForSequenceClassification:
    """Seeded (0) random 3-class XLM-R sequence classifier in eval mode."""
    torch.manual_seed(0)
    return XLMRobertaForSequenceClassification(XLMRobertaConfig(**SMALL, num_labels=3)).eval()
