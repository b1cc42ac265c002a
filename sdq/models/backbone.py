"""Backbone names -> HF dirs/ids, tokenizers, and encoders with a task head.

Names a user types (``model.name_or_path``): ``me5_small`` (embedded multilingual-e5-small, offline),
``tiny`` (random 2-layer XLM-R for tests), ``xlmr`` (xlm-roberta-base), ``infoxlm``
(microsoft/infoxlm-base), a local HF dir, or any HF encoder id. ``me5_small_random`` and
``xlmr_base_random`` build those architectures with random weights (timing only: benchmarks run them
where the real weights are not at hand, e.g. on a lent GPU machine).

>>> path = resolve_backbone("me5_small")           # ~/.cache/sdq/me5_small
>>> tok = load_tokenizer("tiny")
>>> model = build_model("tiny", head="token_cls", num_labels=17)
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Literal

from sdq.errors import SdqConfigError, SdqModelError
from sdq.models.cache import atomic_cache_dir, sdq_cache_dir
from sdq.models.embedded import ensure_me5_small, save_xlmr_tokenizer
from sdq.models.hub import hub_load_kwargs, model_errors

EMBEDDED_ALIASES = ("me5_small", "me5-small", "embedded")
HUB_ALIASES = {
    "xlmr": "xlm-roberta-base", "xlmr_large": "xlm-roberta-large",
    "infoxlm": "microsoft/infoxlm-base", "infoxlm_large": "microsoft/infoxlm-large",
}
HEADS = ("seq_cls", "token_cls", "rank")
TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
        "vocab_size": 250002, "max_position_embeddings": 514, "type_vocab_size": 1}
_XLMR = {"max_position_embeddings": 514, "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2}
RANDOM_ARCHS = {  # name -> XLMRobertaConfig fields of a real architecture, random init
    "me5_small_random": {**_XLMR, "vocab_size": 250037, "hidden_size": 384, "num_hidden_layers": 12,
                         "num_attention_heads": 12, "intermediate_size": 1536, "type_vocab_size": 2,
                         "layer_norm_eps": 1e-12},
    "xlmr_base_random": {**_XLMR, "vocab_size": 250002, "hidden_size": 768, "num_hidden_layers": 12,
                         "num_attention_heads": 12, "intermediate_size": 3072, "type_vocab_size": 1,
                         "layer_norm_eps": 1e-5},
}
TINY_SEED = 0
TINY_VERSION = 1

Head = Literal["seq_cls", "token_cls", "rank"]


def _build_tiny(dst: Path) -> None:
    import torch
    from transformers import XLMRobertaConfig, XLMRobertaModel

    cfg = XLMRobertaConfig(**TINY, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                           architectures=["XLMRobertaModel"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        model = XLMRobertaModel(cfg, add_pooling_layer=False)  # heads don't use a pooler
    model.save_pretrained(str(dst))
    save_xlmr_tokenizer(dst, model_max_length=TINY["max_position_embeddings"] - 2)


def ensure_tiny(cache_dir: str | Path | None = None) -> Path:
    """The random-init (seed 0) 2-layer XLM-R dir (hidden 32, XLM-R tokenizer), built once."""
    marker = {"kind": "tiny", "version": TINY_VERSION, "seed": TINY_SEED, **TINY}
    return atomic_cache_dir(sdq_cache_dir(cache_dir) / "tiny_xlmr", marker, _build_tiny)


def _looks_like_path(name: str) -> bool:
    return (name.startswith(("/", "./", "../", "~", "\\")) or name.count("/") > 1
            or os.sep != "/" and os.sep in name or (len(name) > 1 and name[1] == ":"))


def resolve_backbone(name_or_path: str, cache_dir: str | Path | None = None) -> str:
    """A loadable dir or hub id for a user-typed model name.

    ``me5_small`` -> converted embedded dir; ``tiny`` -> cached random tiny dir; ``xlmr``/``infoxlm``
    -> hub ids; an existing dir -> itself; a path-like name that does not exist -> SdqModelError;
    anything else -> returned as a hub id (availability is checked when loading).
    """
    name = str(name_or_path).strip()
    if not name:
        raise SdqConfigError("model.name_or_path is empty; use model=me5_small, model=tiny or a HF dir/id")
    if name in RANDOM_ARCHS:
        raise SdqConfigError(f"'{name}' is a random-weight architecture for timing benchmarks (build_model only, "
                             "no weights or tokenizer on disk); use model=me5_small, model=tiny or a HF dir/id")
    if name in EMBEDDED_ALIASES:
        return str(ensure_me5_small(cache_dir))
    if name == "tiny":
        return str(ensure_tiny(cache_dir))
    if name in HUB_ALIASES:
        return HUB_ALIASES[name]
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path)
    if _looks_like_path(name) or path.exists():
        raise SdqModelError(f"model dir '{name}' does not exist or is not a directory ({path.resolve()}); "
                            "pass an existing HF model dir via model.name_or_path=<dir>, or use model=me5_small")
    return name


def _load_kwargs(resolved: str) -> dict:
    return {} if Path(resolved).is_dir() else hub_load_kwargs(resolved)


def load_tokenizer(name_or_path: str, cache_dir: str | Path | None = None, **kw):
    """The (fast) tokenizer of a backbone name/dir/hub id; one-line SdqModelError if unavailable.

    Loaded once per process and directory (the XLM-R tokenizer.json takes seconds to parse).
    """
    resolved = resolve_backbone(name_or_path, cache_dir)
    return _cached_tokenizer(resolved, tuple(sorted(kw.items())))


@functools.lru_cache(maxsize=8)
def _cached_tokenizer(resolved: str, kw: tuple):
    from transformers import AutoTokenizer

    with model_errors(resolved):
        return AutoTokenizer.from_pretrained(resolved, **{**_load_kwargs(resolved), **dict(kw)})


def build_model(name_or_path: str, head: Head, num_labels: int, cache_dir: str | Path | None = None, **kw):
    """A pretrained encoder with a fresh task head (``nn.Module``, HF ``PreTrainedModel``).

    ``head``: ``seq_cls`` (sentence/pair classification: XNLI, PAWS-X, NC, QAM),
    ``token_cls`` (tagging: NER, POS), ``rank`` (QADSM/WPR: sequence classification whose
    ``num_labels`` logits score the relevance classes; rank by expected relevance or P(relevant)).
    ``cache_dir`` is the sdq cache (me5_small/tiny); ``kw`` go to ``from_pretrained``
    (e.g. ``id2label``, ``dtype``, ``attn_implementation``).

    >>> model = build_model("me5_small", head="seq_cls", num_labels=3)
    >>> logits = model(**tok(["a", "b"], return_tensors="pt", padding=True)).logits   # (B, 3)
    """
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    if head not in HEADS:
        raise SdqConfigError(f"model head '{head}' is unknown (known: {', '.join(HEADS)}); "
                             "use head=seq_cls, token_cls or rank")
    if int(num_labels) < 1:
        raise SdqConfigError(f"num_labels={num_labels} for head '{head}' must be >= 1")
    auto = AutoModelForTokenClassification if head == "token_cls" else AutoModelForSequenceClassification
    if str(name_or_path) in RANDOM_ARCHS:  # random weights from torch's global RNG (seed it first)
        from transformers import XLMRobertaConfig

        cfg = XLMRobertaConfig(**RANDOM_ARCHS[str(name_or_path)], num_labels=int(num_labels))
        return auto.from_config(cfg, **kw)
    resolved = resolve_backbone(name_or_path, cache_dir)
    with model_errors(resolved):
        return auto.from_pretrained(resolved, num_labels=int(num_labels), **{**_load_kwargs(resolved), **kw})


def set_dropout(model, p: float) -> int:
    """Set every ``nn.Dropout`` (hidden, attention probabilities, head) of ``model`` to ``p`` and the HF
    config's dropout fields with it; returns the number of Dropout modules changed.

    >>> set_dropout(student, 0.0)   # distil a deterministic student: its train-mode forward = eval-mode
    """
    from torch import nn

    if not 0.0 <= float(p) < 1.0:
        raise SdqConfigError(f"dropout {p} must be in [0, 1)")
    mods = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    for m in mods:
        m.p = float(p)
    cfg = getattr(model, "config", None)
    for key in ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout"):
        if cfg is not None and getattr(cfg, key, None) is not None:
            setattr(cfg, key, float(p))
    return len(mods)
