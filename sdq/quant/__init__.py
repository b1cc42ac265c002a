"""Fake quantization for HF encoders (tensors and nn.Modules only; no Lightning/data/Hydra).

Usage::

    cfg = QuantConfig.from_dict({"weight": {"bits": 4, "granularity": "channel"},
                                 "act": {"bits": 8, "symmetric": False, "observer": "ema"},
                                 "embedding": {"bits": 4, "granularity": "row"},
                                 "attention": {"bits": 8, "symmetric": False}}).validate()
    report = prepare(model, cfg); print(report)          # swaps modules in place
    set_phase(model, "calibrate"); model(**batch)          # observers see data
    set_phase(model, "frozen")                             # or "learn" (LSQ steps trained)
    set_enabled(model, False)                              # exact FP forward
    plain = strip(model)                                   # plain modules, quantized weights folded in

Parts: ``weight`` -> every nn.Linear (``QuantLinear.weight_quantizer``), ``act`` -> Linear inputs
(``act_quantizer``), ``embedding`` -> every nn.Embedding (``QuantEmbedding``; row-local granularities
quantize only looked-up rows; ``set_row_bits`` for per-token bits), ``attention`` -> Q/K/V/softmax
probs per layer (``module.sdq_attn`` on each HF attention module + registered attention function
``sdq_quant_sdpa``/``sdq_quant_eager``). ``skip`` regexes (default ``classifier``) stay FP;
``overrides`` regex -> weight/embedding field changes (mixed precision, first match wins).

Schemes: ``uniform`` (observers minmax | ema | percentile | mse; activations keep running stats:
minmax extremes, others EMA with ``ema_decay``; weights use the current tensor), ``lsq`` (same, and in
the ``learn`` phase the step is an nn.Parameter trained with gradient scale 1/sqrt(n*qmax), n = values
per step), ``kmeans`` (Lloyd, 2^bits sorted centroids per group), ``binary`` (w ~ sum_i alpha_i b_i).
Symmetric levels are [-2^(b-1), 2^(b-1)-1] (``narrow_range``: from -(2^(b-1)-1); 2 bits -> ternary);
1-bit symmetric uniform is ``alpha*sign(w)`` with alpha = mean|w|. Non-uniform schemes and weight
ranges re-fit in the calibrate phase and every ``refit_every`` training steps (0 = never outside
calibrate; prepare fits every weight quantizer once). Quant-Noise: ``quant_noise_p`` in (0, 1) ->
in training each block of ``quant_noise_block`` inputs is quantized with probability p; eval: all.
All state (phase, enabled, step, ranges, scales, zero points, codebooks, alphas, row bits) is in
buffers/parameters, so ``load_state_dict`` into a freshly prepared model restores it exactly.
Quantizers start in the ``calibrate`` phase. Phase/enabled/initialized are mirrored on the host (no GPU
sync per forward): change them with ``set_phase``/``set_enabled`` (or call ``q.sync_state()`` after
writing the buffers yourself); ``load_state_dict`` refreshes the mirrors. DDP: activation observer
statistics are all-reduced when torch.distributed is initialized (minmax: MIN/MAX, others: mean).

Integer domain: in eval mode without grad, a QuantLinear with a per-tensor uniform input quantizer and a
uniform symmetric per-channel/tensor weight (<= 8 bits) sums integer codes and rescales once
(``sdq.quant.intdomain``), exactly what its int8 export (``sdq.int8.Int8Linear``) computes.

For exporters: every weight quantizer (``QuantLinear.weight_quantizer`` etc.) has
``quantize_int(w) -> (codes int32 of w.shape, params)`` and ``dequantize_int(codes, params)`` which
reproduces the fake-quantized forward exactly. Params are per group, shape (G, 1) / (G, K), in the
grouped layout: tensor G=1; channel/row G=rows (output features / vocabulary rows); group G=rows *
cols/group_size, row-major (group j of row r is index r*cols/group_size + j).
- uniform: ``w = (codes - zero_point) * scale``; ``qmin``/``qmax``; ``bits`` int or per-row tensor;
  ``scheme="sign"`` (1 bit symmetric): codes 1 -> +scale, 0 -> -scale.
- kmeans: ``w = codebook[g, codes]`` (codebook (G, 2^bits), sorted).
- binary: ``w = sum_i alpha[g, i] * (2*((codes >> i) & 1) - 1)`` (alpha (G, bits)).
"""

from sdq.quant.attention import AttentionQuantizer, attach_attention_quantizers, detach_attention_quantizers
from sdq.quant.base import PHASES, QuantizerBase
from sdq.quant.config import GRANULARITIES, OBSERVERS, SCHEMES, QuantConfig, QuantizerConfig
from sdq.quant.factory import make_quantizer
from sdq.quant.modules import QuantEmbedding, QuantLinear, quant_noise
from sdq.quant.nonuniform import BinaryCodeQuantizer, KMeansQuantizer
from sdq.quant.prepare import prepare, quantizers, set_enabled, set_phase, strip
from sdq.quant.report import QuantReport, quant_report
from sdq.quant.uniform import UniformQuantizer

__all__ = [
    "GRANULARITIES",
    "OBSERVERS",
    "PHASES",
    "SCHEMES",
    "AttentionQuantizer",
    "BinaryCodeQuantizer",
    "KMeansQuantizer",
    "QuantConfig",
    "QuantEmbedding",
    "QuantLinear",
    "QuantReport",
    "QuantizerBase",
    "QuantizerConfig",
    "UniformQuantizer",
    "attach_attention_quantizers",
    "detach_attention_quantizers",
    "make_quantizer",
    "prepare",
    "quant_noise",
    "quant_report",
    "quantizers",
    "set_enabled",
    "set_phase",
    "strip",
]
