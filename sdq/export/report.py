"""Size accounting of an export: bytes per module kind (embeddings, attention, FFN, other) vs fp32.

>>> report = export_quantized(student, "out/")
>>> print(report)                 # size table + whole-model ratio
>>> report.ratio                  # fp32 bytes / packed bytes (embeddings included)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

KINDS = ("embeddings", "attention", "ffn", "other")


def module_kind(param_name: str) -> str:
    """Which row of the size table a parameter (or one of its packed arrays) counts in."""
    if re.search(r"embed", param_name):
        return "embeddings"
    if re.search(r"\.attention\.|\.attn\.|self_attn", param_name):
        return "attention"
    if re.search(r"\.(intermediate|output)\.dense\.|\.mlp\.|\.ffn\.|fc[12]\.", param_name):
        return "ffn"
    return "other"


@dataclass
class ExportReport:
    """What ``export_quantized`` wrote: sizes per kind in bytes (fp32 vs packed), the files, counts."""

    out_dir: str
    fp32_bytes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    packed_bytes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    n_quantized: int = 0
    n_fp: int = 0
    bits: dict[str, int] = field(default_factory=dict)  # packed tensor -> bits
    files: dict[str, int] = field(default_factory=dict)  # file name -> size on disk
    onnx: dict | None = None  # ONNX integer model: path, size, rewrite counts
    quantized_inputs: int = 0  # Linears whose input activations the student quantizes
    attention_quantized: bool = False  # Q/K/V/probs quantizers (backend=int8 does not reproduce them)
    agreement: dict | None = None

    @property
    def fp32_total(self) -> int:
        return sum(self.fp32_bytes.values())

    @property
    def packed_total(self) -> int:
        return sum(self.packed_bytes.values())

    @property
    def ratio(self) -> float:
        """Whole-model compression vs the fp32 weights (tensor bytes, embeddings included)."""
        return self.fp32_total / max(self.packed_total, 1)

    def add(self, name: str, fp32: int, packed: int) -> None:
        kind = module_kind(name)
        self.fp32_bytes[kind] += fp32
        self.packed_bytes[kind] += packed

    def table(self) -> str:
        lines = [f"{'module kind':<12} {'fp32 MB':>10} {'packed MB':>10} {'ratio':>7}"]
        for k in KINDS:
            f, p = self.fp32_bytes[k], self.packed_bytes[k]
            if f or p:
                lines.append(f"{k:<12} {f / 1e6:>10.2f} {p / 1e6:>10.2f} {f / max(p, 1):>6.2f}x")
        lines.append(f"{'total':<12} {self.fp32_total / 1e6:>10.2f} {self.packed_total / 1e6:>10.2f} "
                     f"{self.ratio:>6.2f}x")
        return "\n".join(lines)

    def __str__(self) -> str:
        bits = sorted(set(self.bits.values()))
        head = (f"exported {self.n_quantized} packed tensors (bits {bits}) + {self.n_fp} fp tensors "
                f"to {self.out_dir}")
        tail = f"\nwhole model: {self.ratio:.2f}x smaller than fp32"
        if self.onnx:
            tail += f"\nONNX integer model: {self.onnx['path']} ({self.onnx['bytes'] / 1e6:.1f} MB, {self.onnx['ops']})"
        return f"{head}\n{self.table()}{tail}"

    def to_dict(self) -> dict:
        return {"out_dir": self.out_dir, "fp32_bytes": self.fp32_bytes, "packed_bytes": self.packed_bytes,
                "fp32_total": self.fp32_total, "packed_total": self.packed_total, "ratio": self.ratio,
                "n_quantized": self.n_quantized, "n_fp": self.n_fp, "files": self.files, "onnx": self.onnx,
                "agreement": self.agreement}
