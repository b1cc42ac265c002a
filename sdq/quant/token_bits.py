"""Per-token embedding bits by token frequency (Chung et al., Findings EMNLP 2020).

Rows of the word-embedding table are ranked by token frequency; the most frequent ``buckets[0][1]``
share of the vocabulary gets ``buckets[0][0]`` bits, the next share the next bits, ...; all other rows
and every token never seen get ``rest_bits``. With ``scheme: binary`` a row of b bits is
w ~ sum_{i<b} alpha_i b_i (:class:`RowBinaryQuantizer`, 1..8 bits per row); with ``scheme: uniform``
the per-row ``row_bits`` of :class:`~sdq.quant.uniform.UniformQuantizer` are used (2..8 bits).
The bits live in the quantizer's ``row_bits`` buffer, so ``load_state_dict`` restores them.

Frequency sources (``source``): ``tokenizer`` (default, data-free) = exp(unigram log-probability) of
each sentencepiece piece as stored in the tokenizer, i.e. its frequency in the multilingual
pretraining corpus (CC-100 for XLM-R), which covers every language of the zero-shot transfer;
``train`` = counts of the task's (English) training tokens: non-English tokens then count as unseen.

>>> cfg = QuantConfig.from_dict({"embedding": {"bits": 4, "scheme": "binary", "granularity": "row"},
...                              "token_bits": {"buckets": [[4, 0.02], [2, 0.2]], "rest_bits": 1}})
>>> prepare(model, cfg); assign_token_bits(model, cfg.token_bits, tokenizer_frequencies(tok, 250037))
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

import torch
from torch import nn

from sdq.errors import SdqModelError
from sdq.quant import functional as F
from sdq.quant.base import chunks
from sdq.quant.config import QuantizerConfig, TokenBitsConfig
from sdq.quant.modules import QuantEmbedding
from sdq.quant.nonuniform import BinaryCodeQuantizer


def assign_bits(freq: torch.Tensor, buckets: list, rest_bits: int) -> torch.Tensor:
    """Bits per row (V,) int8: rank rows by ``freq`` (ties: lower id first); bucket k takes the next
    round(share_k * V) rows; the rest and every row with freq == 0 get ``rest_bits``."""
    freq = torch.as_tensor(freq, dtype=torch.float64).reshape(-1)  # (V,)
    v = freq.numel()
    order = torch.sort(-freq, stable=True).indices  # (V,) most frequent first
    bits = torch.full((v,), int(rest_bits), dtype=torch.int8)
    start = 0
    for b, share in buckets:
        n = round(float(share) * v)
        bits[order[start:start + n]] = int(b)
        start += n
    bits[freq <= 0] = int(rest_bits)
    return bits


class RowBinaryQuantizer(BinaryCodeQuantizer):
    """Binary codes with per-row bit counts: buffer ``row_bits`` (R,) int8 (<= cfg.bits); a row of b bits
    uses alpha[:, :b] (alpha[:, b:] = 0, so the 2^cfg.bits codebook holds the row's 2^b values)."""

    def __init__(self, cfg: QuantizerConfig, shape: tuple[int, ...], kind: str = "weight"):
        super().__init__(cfg, shape, kind)
        self.register_buffer("row_bits", torch.full((self.shape[0],), cfg.bits, dtype=torch.int8))

    def group_bits(self, gidx: torch.Tensor | None = None) -> torch.Tensor:
        """Bits of each group row (G',) long."""
        return self.take(self.row_bits.long().repeat_interleave(self.groups_per_row), gidx)

    def _fit(self, x2d: torch.Tensor, gidx: torch.Tensor | None) -> None:
        x2d = x2d.float()  # (G', n)
        bits = self.group_bits(gidx).to(x2d.device)  # (G',)
        out = torch.zeros(x2d.shape[0], self.cfg.bits, device=x2d.device)  # (G', B)
        for b in bits.unique().tolist():
            idx = (bits == b).nonzero().squeeze(1)
            sub = x2d[idx]
            fit = torch.cat([F.binary_fit(sub[s], b, self.cfg.binary_iters)
                             for s in chunks(sub.shape[0], sub.shape[1])], 0)  # (n_b, b)
            out[idx, :b] = fit
        self.put_(self.alpha, gidx, out)

    def storage_bits(self) -> tuple[float, float]:
        bits = self.row_bits.double()
        return float(bits.mean()), float(32 * bits.sum() * self.groups_per_row)  # codes, fp32 alphas

    def extra_repr(self) -> str:
        return super().extra_repr() + f", row_bits={sorted(set(self.row_bits.tolist()))}"


def attach_token_bits(model: nn.Module, tb: TokenBitsConfig) -> list[str]:
    """prepare hook: binary embeddings matching ``tb.module`` get a :class:`RowBinaryQuantizer` (all rows at
    the maximum bits until :func:`assign_token_bits`); returns the matched embedding names."""
    names = []
    for name, mod in model.named_modules():
        if isinstance(mod, QuantEmbedding) and mod.weight_quantizer is not None and re.search(tb.module, name):
            q = mod.weight_quantizer
            if q.cfg.scheme == "binary" and not isinstance(q, RowBinaryQuantizer):
                new = RowBinaryQuantizer(q.cfg, q.shape, "weight").to(mod.weight.device)
                new.alpha.copy_(q.alpha)  # all rows at cfg.bits: the fit prepare just did
                new.set_phase(q.phase_name)
                new._mark_initialized()
                mod.weight_quantizer = new
            names.append(name)
    if not names:
        raise SdqModelError(f"quant.token_bits.module={tb.module!r} matches no quantized embedding; use the "
                            "embedding's name (e.g. word_embeddings$) and set quant.embedding")
    return names


@torch.no_grad()
def set_token_bits(emb: nn.Module, bits: torch.Tensor) -> None:
    """Write per-row bits (num_embeddings,) into a prepared embedding and re-fit its quantizer."""
    q = emb.weight_quantizer
    bits = torch.as_tensor(bits).reshape(-1)
    if not isinstance(q, RowBinaryQuantizer):
        emb.set_row_bits(bits)  # uniform: checks 2..8 bits itself
        return
    if bits.numel() != emb.num_embeddings or int(bits.min()) < 1 or int(bits.max()) > q.cfg.bits:
        raise ValueError(f"row bits must be {emb.num_embeddings} integers in 1..{q.cfg.bits}")
    q.row_bits.copy_(bits.to(q.row_bits))
    q.calibrate_(emb.weight)


def assign_token_bits(model: nn.Module, tb: TokenBitsConfig, freq: torch.Tensor) -> dict[str, float]:
    """Bits by frequency for every embedding matching ``tb.module``; rows beyond ``freq`` count as unseen.
    Returns {embedding name: average bits per row}."""
    out = {}
    for name in attach_token_bits(model, tb):
        emb = model.get_submodule(name)
        f = torch.zeros(emb.num_embeddings, dtype=torch.float64)
        n = min(f.numel(), freq.numel())
        f[:n] = freq[:n].double()
        bits = assign_bits(f, tb.buckets, tb.rest_bits)
        set_token_bits(emb, bits)
        out[name] = float(bits.double().mean())
    return out


def tokenizer_frequencies(tokenizer) -> torch.Tensor:
    """exp(unigram score) per token id (V_tok,) from a fast sentencepiece-Unigram tokenizer (data-free)."""
    try:
        model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
        scores = [float(s) for _, s in model["vocab"]]
    except (AttributeError, KeyError, TypeError, ValueError):
        raise SdqModelError("token_bits.source=tokenizer needs a fast Unigram (sentencepiece) tokenizer with "
                            "piece scores; use token_bits.source=train") from None
    return torch.tensor(scores, dtype=torch.float64).exp()


def count_tokens(batches: Iterable[dict], vocab_size: int) -> torch.Tensor:
    """Token counts (vocab_size,) over ``input_ids`` of the batches (padding excluded via attention_mask)."""
    counts = torch.zeros(vocab_size, dtype=torch.float64)
    for batch in batches:
        ids = batch["input_ids"]  # (B, T)
        mask = batch.get("attention_mask")
        ids = ids[mask.bool()] if mask is not None else ids.reshape(-1)
        counts += torch.bincount(ids.reshape(-1), minlength=vocab_size)[:vocab_size].double()
    return counts

