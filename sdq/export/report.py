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
    hf_copy: dict | None = None  # the transformers copy: written?, why, its agreement (sdq.export.hf_copy)

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

    @property
    def onnx_line(self) -> str:
        """What ``model.onnx`` is: ``model.onnx: int8 (...)``, ``model.onnx: float (...)`` or not written."""
        if not self.onnx:
            return "model.onnx: not written (weight-only quantization; onnx=true writes one with float MatMuls)"
        ops = self.onnx["ops"]
        n_int, n_qatt = ops.get("integer", 0), ops.get("qattention", 0)
        per_channel = self.onnx.get("per_channel_acts", 0)
        tail = (f"; {per_channel} Linear inputs quantized per channel run as Q/DQ + float MatMul: per-tensor inputs "
                "(quant=w8a8_int8) run as integer GEMMs") if per_channel else ""
        dynamic = (f", {ops['per_token']} with per-token input quantization in the graph" if ops.get("per_token")
                   else "") + (f", {ops['rotated']} with the input rotated first" if ops.get("rotated") else "")
        if n_int or n_qatt:
            return (f"model.onnx: int8 ({n_int} MatMulIntegerToFloat + {n_qatt} QAttention integer ops, "
                    f"{ops.get('act_qdq', 0)} Q/DQ + {ops.get('float', 0)} float MatMuls{dynamic}{tail})")
        return (f"model.onnx: float (MatMuls with the dequantized weights: {ops.get('act_qdq', 0)} with Q/DQ input "
                f"quantization{dynamic}, {ops.get('float', 0)} without; {ops.get('int_weight', 0)} weights stored as "
                f"8-bit codes{tail})")

    @property
    def transformers_line(self) -> str:
        """Whether plain transformers loads the dir (``model.safetensors``), and why."""
        if not self.hf_copy:
            return "transformers: not decided"
        if self.hf_copy["written"]:
            return f"transformers: model.safetensors = dequantized weights ({self.hf_copy['reason']})"
        return f"transformers: refused, no model.safetensors ({self.hf_copy['reason']})"

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
        tail += f"\n{self.onnx_line}\n{self.transformers_line}"
        return f"{head}\n{self.table()}{tail}"

    def to_dict(self) -> dict:
        return {"out_dir": self.out_dir, "fp32_bytes": self.fp32_bytes, "packed_bytes": self.packed_bytes,
                "fp32_total": self.fp32_total, "packed_total": self.packed_total, "ratio": self.ratio,
                "n_quantized": self.n_quantized, "n_fp": self.n_fp, "files": self.files, "onnx": self.onnx,
                "agreement": self.agreement, "hf_copy": self.hf_copy, "onnx_kind": self.onnx_line,
                "transformers": self.transformers_line}
