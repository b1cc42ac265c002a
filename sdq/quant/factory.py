"""The quantizer for a config: one place that knows every scheme's class.

>>> q = make_quantizer(QuantizerConfig(bits=4, scheme="kmeans", granularity="channel"), (16, 32))
>>> y = q(w)                   # fake-quantized, same shape as w
"""

from __future__ import annotations

from sdq.quant.base import QuantizerBase
from sdq.quant.config import QuantizerConfig
from sdq.quant.nonuniform import BinaryCodeQuantizer, KMeansQuantizer
from sdq.quant.per_token import PerTokenQuantizer
from sdq.quant.uniform import UniformQuantizer


def make_quantizer(cfg: QuantizerConfig, shape: tuple[int, ...], kind: str = "weight") -> QuantizerBase:
    """The quantizer for ``cfg.scheme``: uniform/lsq -> UniformQuantizer, kmeans, binary; activations with
    granularity=token -> PerTokenQuantizer."""
    if kind == "act" and cfg.granularity == "token":
        return PerTokenQuantizer(cfg, shape, kind)
    if cfg.scheme == "kmeans":
        return KMeansQuantizer(cfg, shape, kind)
    if cfg.scheme == "binary":
        return BinaryCodeQuantizer(cfg, shape, kind)
    return UniformQuantizer(cfg, shape, kind)
