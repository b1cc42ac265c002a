"""Backbones (embedded me5_small, tiny, local dirs, HF hub ids) and task heads.

>>> from sdq.models import build_model, load_tokenizer
>>> model, tok = build_model("me5_small", head="seq_cls", num_labels=3), load_tokenizer("me5_small")
"""

from sdq.models.backbone import (
    EMBEDDED_ALIASES,
    HEADS,
    HUB_ALIASES,
    RANDOM_ARCHS,
    build_model,
    ensure_tiny,
    load_tokenizer,
    resolve_backbone,
    set_dropout,
)
from sdq.models.embedded import ensure_me5_small

__all__ = ["EMBEDDED_ALIASES", "HEADS", "HUB_ALIASES", "RANDOM_ARCHS", "build_model", "ensure_me5_small",
           "ensure_tiny", "load_tokenizer", "resolve_backbone", "set_dropout"]
