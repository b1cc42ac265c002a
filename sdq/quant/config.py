"""Quantization config dataclasses, built from plain (Hydra) dicts and validated before any model loads.

>>> w = QuantizerConfig(bits=4, granularity="channel")
>>> cfg = QuantConfig.from_dict({"weight": {"bits": 4}, "act": None, "skip": ["classifier"]}).validate()
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field, fields
from typing import Any

from sdq.errors import SdqConfigError

SCHEMES = ("uniform", "lsq", "kmeans", "binary")
GRANULARITIES = ("tensor", "channel", "group", "row", "token")
OBSERVERS = ("minmax", "ema", "percentile", "mse")
KMEANS_INITS = ("quantile", "linear")
KMEANS_WEIGHTINGS = ("none", "act")


def _unknown(keys: set[str], known: list[str], where: str) -> None:
    if keys:
        raise SdqConfigError(f"{where}: unknown field(s) {', '.join(sorted(keys))}; known: {', '.join(known)}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass
class QuantizerConfig:
    """How one tensor is fake-quantized.

    ``bits`` 1..8; ``scheme`` uniform (observer ranges) | lsq (learned step) | kmeans | binary;
    ``granularity`` tensor | channel (weights: output rows, activations: last dim) | group (``group_size``
    consecutive inputs of a row) | row (= channel; name used for embedding tables) | token (activations only:
    a dynamic range per token, :class:`sdq.quant.per_token.PerTokenQuantizer`).
    ``rotate`` (activations only): the Linear's input and weight are rotated by the same orthogonal Hadamard map
    (:mod:`sdq.quant.rotation`), so the product is unchanged and the quantizers see outliers spread out.
    ``narrow_range`` drops the most negative symmetric level (2 bits -> ternary {-1,0,1}).
    ``kmeans_weighting`` act: Lloyd centroids weighted by each weight column's mean squared input
    activation from the calibration batches, so k-means minimises the Linear's output error
    E||(W - W_hat) x||^2 (diagonal approximation, as SqueezeLLM/GPTQ) instead of the weight error;
    none: plain k-means (embedding tables always; other schemes ignore it, e.g. a uniform override).
    ``refit_every`` N>0 re-fits weight ranges/centroids/alphas every N training steps outside calibrate
    (0: only in the calibrate phase).

    >>> QuantizerConfig(bits=4, scheme="kmeans", granularity="channel").validate("quant.weight")
    """

    bits: int = 8
    scheme: str = "uniform"
    symmetric: bool = True
    granularity: str = "tensor"
    group_size: int | None = None
    observer: str = "minmax"
    percentile: float = 99.99
    ema_decay: float = 0.9
    narrow_range: bool = False
    mse_grid: int = 20
    kmeans_iters: int = 20
    kmeans_init: str = "quantile"
    kmeans_weighting: str = "none"
    binary_iters: int = 10
    refit_every: int = 0
    rotate: bool = False

    @classmethod
    def from_dict(cls, d: dict | QuantizerConfig | None, where: str = "quant") -> QuantizerConfig | None:
        """``None`` -> None (part disabled); a dict with unknown keys -> SdqConfigError."""
        if d is None or isinstance(d, QuantizerConfig):
            return d
        if not isinstance(d, dict):
            raise SdqConfigError(f"{where} must be a mapping of quantizer fields or null, got {d!r}")
        known = [f.name for f in fields(cls)]
        _unknown(set(d) - set(known), known, where)
        return cls(**d)

    def replace(self, **changes: Any) -> QuantizerConfig:
        return dataclasses.replace(self, **changes)

    @property
    def levels(self) -> int:
        return 2 ** self.bits

    def validate(self, where: str = "quant") -> QuantizerConfig:
        """Raise SdqConfigError (one line) on an invalid value; return self."""
        if not _is_int(self.bits) or not 1 <= self.bits <= 8:
            raise SdqConfigError(f"{where}.bits={self.bits!r} is not supported; use an integer from 1 to 8")
        for name, value, allowed in (("scheme", self.scheme, SCHEMES), ("granularity", self.granularity,
                                     GRANULARITIES), ("observer", self.observer, OBSERVERS),
                                     ("kmeans_init", self.kmeans_init, KMEANS_INITS),
                                     ("kmeans_weighting", self.kmeans_weighting, KMEANS_WEIGHTINGS)):
            if value not in allowed:
                raise SdqConfigError(f"{where}.{name}={value!r} is unknown; choose one of: {', '.join(allowed)}")
        if self.granularity == "group":
            if not _is_int(self.group_size) or self.group_size < 1:
                raise SdqConfigError(f"{where}.group_size={self.group_size!r}: granularity=group needs a "
                                     "positive integer group_size (e.g. 32 or 128)")
        elif self.group_size is not None:
            raise SdqConfigError(f"{where}.group_size={self.group_size} only applies to granularity=group "
                                 f"(granularity is {self.granularity!r}); remove it or set granularity=group")
        if self.scheme == "lsq" and self.bits < 2:
            raise SdqConfigError(f"{where}: scheme=lsq needs bits >= 2 (got {self.bits}); use scheme=uniform "
                                 "or scheme=binary for 1 bit")
        if not 50.0 < float(self.percentile) <= 100.0:
            raise SdqConfigError(f"{where}.percentile={self.percentile} must be in (50, 100], e.g. 99.99")
        if not 0.0 <= float(self.ema_decay) < 1.0:
            raise SdqConfigError(f"{where}.ema_decay={self.ema_decay} must be in [0, 1), e.g. 0.9")
        for name in ("mse_grid", "kmeans_iters", "binary_iters"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise SdqConfigError(f"{where}.{name}={getattr(self, name)!r} must be a positive integer")
        if not _is_int(self.refit_every) or self.refit_every < 0:
            raise SdqConfigError(f"{where}.refit_every={self.refit_every!r} must be an integer >= 0")
        if not isinstance(self.rotate, bool):
            raise SdqConfigError(f"{where}.rotate={self.rotate!r} must be true or false")
        return self


SOURCES = ("tokenizer", "train")


@dataclass
class TokenBitsConfig:
    """``module`` regex of the embedding(s); ``buckets`` [[bits, share of vocabulary], ...] from the most
    frequent token down; ``rest_bits`` for the remaining and unseen tokens; ``source`` tokenizer | train."""

    module: str = r"word_embeddings$"
    buckets: list = field(default_factory=lambda: [[4, 0.02], [2, 0.2]])
    rest_bits: int = 1
    source: str = "tokenizer"

    @classmethod
    def from_dict(cls, d: dict | TokenBitsConfig | None) -> TokenBitsConfig | None:
        if d is None or isinstance(d, TokenBitsConfig):
            return d
        known = [f.name for f in fields(cls)]
        if not isinstance(d, dict) or set(d) - set(known):
            raise SdqConfigError(f"quant.token_bits={d!r}: use a mapping with fields {', '.join(known)}")
        return cls(**d)

    @property
    def max_bits(self) -> int:
        return max([int(b) for b, _ in self.buckets] + [int(self.rest_bits)])

    def validate(self, emb: QuantizerConfig | None) -> TokenBitsConfig:
        """Check values and that the embedding quantizer can hold them; return self."""
        where = "quant.token_bits"
        if emb is None or emb.scheme not in ("binary", "uniform") or emb.granularity == "tensor":
            raise SdqConfigError(f"{where} needs quant.embedding with scheme binary or uniform and granularity "
                                 "row/channel/group; set quant.embedding accordingly")
        try:
            pairs = [(int(b), float(s)) for b, s in self.buckets]
        except (TypeError, ValueError):
            raise SdqConfigError(f"{where}.buckets={self.buckets!r}: use [[bits, share], ...], "
                                 "e.g. [[4, 0.02], [2, 0.2]]") from None
        low = 1 if emb.scheme == "binary" else 2
        for b in [b for b, _ in pairs] + [self.rest_bits]:
            if not low <= int(b) <= emb.bits:
                raise SdqConfigError(f"{where}: bits {b} outside {low}..{emb.bits} (quant.embedding.bits is the "
                                     f"maximum; scheme {emb.scheme} needs >= {low})")
        if any(s <= 0 for _, s in pairs) or sum(s for _, s in pairs) > 1.0 + 1e-9:
            raise SdqConfigError(f"{where}.buckets shares must be > 0 and sum to <= 1 (got {self.buckets})")
        if self.source not in SOURCES:
            raise SdqConfigError(f"{where}.source={self.source!r} is unknown; choose one of: {', '.join(SOURCES)}")
        try:
            re.compile(self.module)
        except re.error as e:
            raise SdqConfigError(f"{where}.module={self.module!r} is not a valid regex ({e})") from e
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _check_activation(cfg: QuantizerConfig | None, where: str, grans: tuple[str, ...]) -> None:
    if cfg is None:
        return
    if cfg.scheme not in ("uniform", "lsq"):
        raise SdqConfigError(f"{where}.scheme={cfg.scheme!r} is not supported for activations; "
                             "use uniform or lsq")
    if cfg.granularity not in grans:
        raise SdqConfigError(f"{where}.granularity={cfg.granularity!r} is not supported for activations; "
                             f"use {' or '.join(grans)}")
    if cfg.bits == 1 and cfg.symmetric:
        raise SdqConfigError(f"{where}: 1-bit symmetric activations are not supported; use bits >= 2")
    if cfg.granularity == "token" and cfg.scheme != "uniform":
        raise SdqConfigError(f"{where}: granularity=token ranges are dynamic (min-max per token); "
                             f"use scheme=uniform, not {cfg.scheme}")


def _check_not_an_input(cfg: QuantizerConfig | None, where: str) -> None:
    """Refuse ``rotate`` and ``granularity=token`` on what is not a Linear input (weights, tables, attention)."""
    if cfg is not None and (cfg.rotate or cfg.granularity == "token"):
        raise SdqConfigError(f"{where}: rotate and granularity=token apply to Linear inputs only (quant.act); "
                             "remove them here")


@dataclass
class QuantConfig:
    """What to quantize in a model: each part ``None`` = kept in full precision.

    ``weight`` Linear weights, ``act`` Linear inputs, ``embedding`` nn.Embedding tables (per row),
    ``attention`` Q/K/V and softmax probabilities (per layer, via the attention-function registry).
    ``skip``: module-name regexes left FP; ``overrides``: regex -> weight/embedding field overrides
    (first match wins, e.g. ``{"layer\\\\.11\\\\.": {"bits": 8}}``); ``quant_noise_p`` in (0, 1): share of
    weight blocks (``quant_noise_block`` consecutive inputs) quantized per training step (0 or 1: all).

    >>> QuantConfig.from_dict({"weight": {"bits": 4, "granularity": "channel"}}).validate()
    """

    weight: QuantizerConfig | None = None
    act: QuantizerConfig | None = None
    embedding: QuantizerConfig | None = None
    attention: QuantizerConfig | None = None
    skip: list[str] = field(default_factory=lambda: ["classifier"])
    overrides: dict[str, dict] = field(default_factory=dict)
    quant_noise_p: float = 0.0
    quant_noise_block: int = 8
    token_bits: TokenBitsConfig | None = None  # per-token embedding bits by frequency

    @classmethod
    def from_dict(cls, d: dict | None) -> QuantConfig:
        """Plain nested dicts (as Hydra's ``to_container`` gives); ``name``/``defaults`` keys are ignored."""
        d = dict(d or {})
        d.pop("name", None)
        d.pop("defaults", None)
        known = [f.name for f in fields(cls)]
        _unknown(set(d) - set(known), known, "quant")
        for part in ("weight", "act", "embedding", "attention"):
            if part in d:
                d[part] = QuantizerConfig.from_dict(d[part], f"quant.{part}")
        if d.get("skip") is None:
            d.pop("skip", None)
        elif isinstance(d["skip"], str):
            d["skip"] = [d["skip"]]
        d["overrides"] = dict(d.get("overrides") or {})
        if d.get("token_bits") is not None:
            d["token_bits"] = TokenBitsConfig.from_dict(d["token_bits"])
        return cls(**d)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def enabled(self) -> bool:
        return any(p is not None for p in (self.weight, self.act, self.embedding, self.attention)) or bool(
            self.overrides)

    def validate(self) -> QuantConfig:
        """Check every value that can be checked without a model; return self."""
        for part in ("weight", "act", "embedding", "attention"):
            sub = getattr(self, part)
            if sub is not None:
                if not isinstance(sub, QuantizerConfig):
                    raise SdqConfigError(f"quant.{part} must be a QuantizerConfig or null, got {sub!r}")
                sub.validate(f"quant.{part}")
        _check_activation(self.act, "quant.act", ("tensor", "channel", "token"))
        _check_activation(self.attention, "quant.attention", ("tensor",))
        for part in ("weight", "embedding", "attention"):
            _check_not_an_input(getattr(self, part), f"quant.{part}")
        for part in ("weight", "embedding"):
            sub = getattr(self, part)
            if sub is not None and sub.kmeans_weighting != "none" and (part == "embedding" or sub.scheme != "kmeans"):
                raise SdqConfigError(f"quant.{part}.kmeans_weighting={sub.kmeans_weighting!r} applies to k-means "
                                     "Linear weights only (quant.weight with scheme=kmeans); set it to none here")
        if not isinstance(self.skip, list | tuple):
            raise SdqConfigError(f"quant.skip={self.skip!r} must be a list of module-name regexes")
        for pattern in list(self.skip) + list(self.overrides):
            try:
                re.compile(pattern)
            except re.error as e:
                raise SdqConfigError(f"quant: module regex {pattern!r} is invalid ({e}); fix the pattern") from e
        known = [f.name for f in fields(QuantizerConfig)]
        for pattern, over in self.overrides.items():
            where = f"quant.overrides[{pattern!r}]"
            if not isinstance(over, dict):
                raise SdqConfigError(f"{where} must be a mapping of quantizer fields, got {over!r}")
            _unknown(set(over) - set(known), known, where)
            _check_not_an_input(self.override_for(pattern, self.weight).validate(where), where)
        p = self.quant_noise_p
        if isinstance(p, bool) or not isinstance(p, int | float) or not 0.0 <= float(p) <= 1.0:
            raise SdqConfigError(f"quant.quant_noise_p={p!r} must be a number in [0, 1] (0 = off)")
        if not _is_int(self.quant_noise_block) or self.quant_noise_block < 1:
            raise SdqConfigError(f"quant.quant_noise_block={self.quant_noise_block!r} must be a positive integer")
        if self.token_bits is not None:
            self.token_bits = TokenBitsConfig.from_dict(self.token_bits).validate(self.embedding)
        return self

    def override_for(self, pattern: str, base: QuantizerConfig | None) -> QuantizerConfig:
        """``base`` with the override fields of ``pattern`` applied (a fresh config if base is None)."""
        over = self.overrides[pattern]
        return base.replace(**over) if base is not None else QuantizerConfig(**over)

    def weight_config(self, name: str, base: QuantizerConfig | None) -> QuantizerConfig | None:
        """The weight/embedding config of module ``name``: None when skipped, else first matching override."""
        if any(re.search(p, name) for p in self.skip):
            return None
        for pattern in self.overrides:
            if re.search(pattern, name):
                return self.override_for(pattern, base)
        return base

    def skipped(self, name: str) -> bool:
        return any(re.search(p, name) for p in self.skip)
