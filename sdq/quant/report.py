"""What ``prepare`` quantized: counts, share of weights, effective bits and model size.

>>> report = quant_report(model)
>>> print(report); report.to_dict()["effective_bits"]
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from torch import nn

from sdq.quant.attention import AttentionQuantizer
from sdq.quant.modules import QuantEmbedding, QuantLinear
from sdq.quant.per_token import PerTokenQuantizer
from sdq.quant.uniform import UniformQuantizer


@dataclass
class QuantReport:
    """Sizes count every parameter: quantized ones at their bits (+ scales/codebooks), others at 32 bits."""

    modules: list[dict] = field(default_factory=list)  # name, kind, scheme, bits, granularity, params
    n_linear: int = 0
    n_embedding: int = 0
    n_attention: int = 0
    n_act_quantizers: int = 0
    params_total: int = 0
    params_quantized: int = 0
    overhead_bits: float = 0.0
    act_features_total: int = 0  # sum of in_features over every nn.Linear (activation share, per token)
    act_features_quantized: int = 0  # ... of those with an input (activation) quantizer
    extra: dict = field(default_factory=dict)  # method notes (e.g. data-free PTQ: modules kept FP)

    @property
    def share_quantized(self) -> float:
        return self.params_quantized / max(self.params_total, 1)

    @property
    def act_share(self) -> float:
        return self.act_features_quantized / max(self.act_features_total, 1)

    @property
    def bits_per_param(self) -> float:
        """Average bits per parameter over the whole model, scales/codebooks/alphas included."""
        return (self.weight_bits + self.overhead_bits) / max(self.params_total, 1)

    @property
    def weight_bits(self) -> float:
        """Bits of all parameters (quantized at their bits, the rest at 32), without scale overhead."""
        q = sum(m["bits"] * m["params"] for m in self.modules)
        return q + 32.0 * (self.params_total - self.params_quantized)

    @property
    def effective_bits(self) -> float:
        """Average bits per parameter over ALL parameters (FP ones count 32)."""
        return self.weight_bits / max(self.params_total, 1)

    @property
    def size_bytes(self) -> int:
        """Model size at these bits, scales/zero points/codebooks/alphas included."""
        return round((self.weight_bits + self.overhead_bits) / 8)

    @property
    def fp32_size_bytes(self) -> int:
        return 4 * self.params_total

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.update(share_quantized=self.share_quantized, effective_bits=self.effective_bits,
                 act_share=self.act_share, bits_per_param=self.bits_per_param,
                 size_bytes=self.size_bytes, fp32_size_bytes=self.fp32_size_bytes,
                 compression=self.fp32_size_bytes / max(self.size_bytes, 1))
        return d

    def __str__(self) -> str:
        head = f"{'module':<48} {'kind':<9} {'scheme':<7} {'bits':>5} {'gran':<8} {'params':>10}"
        lines = [head, "-" * len(head)]
        for m in self.modules:
            lines.append(f"{m['name'][-48:]:<48} {m['kind']:<9} {m['scheme']:<7} {m['bits']:>5.2f} "
                         f"{m['granularity']:<8} {m['params']:>10,}")
        ratio = self.fp32_size_bytes / max(self.size_bytes, 1)
        counts = (f"quantized modules: {self.n_linear} linear, {self.n_embedding} embedding, "
                  f"{self.n_attention} attention, {self.n_act_quantizers} activation quantizers")
        share = (f"weights quantized: {self.params_quantized:,} / {self.params_total:,} params "
                 f"({100 * self.share_quantized:.1f}%)")
        share += f"; activations quantized: {100 * self.act_share:.1f}% of linear input features"
        size = (f"effective bits/param: {self.effective_bits:.2f} ({self.bits_per_param:.2f} with scales); "
                f"size {self.size_bytes / 2**20:.3f} MiB "
                f"(fp32 {self.fp32_size_bytes / 2**20:.3f} MiB, x{ratio:.1f})")
        lines += ["-" * len(head), counts, share, size]
        return "\n".join(lines)


def quant_report(model: nn.Module) -> QuantReport:
    """Report for a prepared model (recompute after ``set_row_bits`` or overrides changed bits)."""
    rep = QuantReport(params_total=sum(p.numel() for p in model.parameters()))
    for name, mod in model.named_modules():
        if isinstance(mod, QuantLinear | QuantEmbedding) and mod.weight_quantizer is not None:
            q = mod.weight_quantizer
            bits, overhead = q.storage_bits()
            kind = "linear" if isinstance(mod, QuantLinear) else "embedding"
            rep.n_linear += kind == "linear"
            rep.n_embedding += kind == "embedding"
            gran = f"group{q.cfg.group_size}" if q.cfg.granularity == "group" else q.cfg.granularity
            rep.modules.append({"name": name, "kind": kind, "scheme": q.cfg.scheme, "bits": bits,
                                "granularity": gran, "params": mod.weight.numel()})
            rep.params_quantized += mod.weight.numel()
            rep.overhead_bits += overhead
        if isinstance(mod, nn.Linear):
            rep.act_features_total += mod.in_features
            rep.act_features_quantized += mod.in_features * (getattr(mod, "act_quantizer", None) is not None)
        if isinstance(mod, AttentionQuantizer):
            rep.n_attention += 1
        elif isinstance(mod, UniformQuantizer | PerTokenQuantizer) and mod.kind == "act":
            rep.n_act_quantizers += 1
    return rep
