"""Data-free INT8 PTQ (Martynov et al., LREC-COLING 2024): calibration inputs without any task example.

Source: the tokenizer's own sentencepiece unigram model. Its piece scores are log-probabilities
estimated on the multilingual pretraining corpus (CC-100 for XLM-R / mE5), so sampling pieces with
p ~ exp(score) reproduces the corpus' token statistics over ~100 languages, needs nothing beyond the
checkpoint, and cannot leak task data. To look more like text, each pseudo-sentence keeps to the Unicode
script of its first piece (Latin, Cyrillic, Arabic, CJK, ...), and inputs are sentence pairs with the
model's special tokens (``<s> A </s></s> B </s>``), lengths uniform in [min_len, max_len].

``prepare_datafree`` = sensitivity probe on these inputs -> most sensitive modules kept FP within the
INT8 budget (>= ``budget`` of weights and of linear-input activations INT8) -> prepare -> calibrate.

>>> batches = datafree_batches(tokenizer, n=128, batch_size=32)
>>> report = prepare_datafree(model, QuantConfig.from_dict(w8a8), tokenizer, {"budget": 0.95}, run_dir)
"""

from __future__ import annotations

import logging
import re
import unicodedata
from itertools import islice
from pathlib import Path

import torch
from torch import nn

from sdq.calib.calibrate import calibrate
from sdq.calib.sensitivity import budget_skip, layer_sensitivity, write_sensitivity
from sdq.errors import SdqModelError
from sdq.quant.config import QuantConfig
from sdq.quant.prepare import prepare
from sdq.quant.report import QuantReport
from sdq.quant.token_bits import tokenizer_frequencies

log = logging.getLogger(__name__)

DEFAULTS = {"n": 128, "batch_size": 32, "min_len": 8, "max_len": 48, "pair": True, "seed": 0,
            "probe_n": 32, "probe_bits": 4, "probe_act_bits": 8, "budget": 0.95, "weight_scope": "model",
            "probe_only": None}


def piece_script(piece: str) -> str:
    """Unicode script of a piece's first letter (``LATIN``, ``CYRILLIC``, ``CJK``...), ``""`` if none."""
    for ch in piece:
        if ch.isalpha():
            name = unicodedata.name(ch, "")
            return name.split(" ")[0] if name else ""
    return ""


def unigram_table(tokenizer) -> tuple[torch.Tensor, list[str]]:
    """Sampling probabilities (V,) of the normal pieces (specials and byte/unk pieces at 0) and scripts."""
    prob = tokenizer_frequencies(tokenizer).clone()  # (V,)
    pieces = tokenizer.convert_ids_to_tokens(list(range(prob.numel())))
    for i in set(tokenizer.all_special_ids):
        if i < prob.numel():
            prob[i] = 0.0
    scripts = [piece_script(p) for p in pieces]
    return prob / prob.sum(), scripts


def sample_sentence(prob: torch.Tensor, first_prob: torch.Tensor, by_script: dict[str, torch.Tensor],
                    scripts: list[str], length: int, gen: torch.Generator) -> list[int]:
    """``length`` piece ids: the first ~ first_prob (pieces with a script), the rest ~ prob within its script."""
    first = int(torch.multinomial(first_prob, 1, generator=gen))
    ids = by_script.get(scripts[first])
    if ids is None or length == 1:
        rest = torch.multinomial(prob, max(length - 1, 1), replacement=True, generator=gen)
    else:
        rest = ids[torch.multinomial(prob[ids], length - 1, replacement=True, generator=gen)]
    return [first] + rest.tolist()[: length - 1]


def datafree_batches(tokenizer, n: int = 128, batch_size: int = 32, min_len: int = 8, max_len: int = 48,
                     pair: bool = True, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """``n`` pseudo-sentence (pairs) from the tokenizer's unigram model, encoded by the tokenizer itself:
    padded batches of input_ids (B, T) and attention_mask (and token_type_ids if the tokenizer gives them)."""
    gen = torch.Generator().manual_seed(seed)
    prob, scripts = unigram_table(tokenizer)
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(scripts):
        if s and prob[i] > 0:
            groups.setdefault(s, []).append(i)
    by_script = {s: torch.tensor(v) for s, v in groups.items()}
    first_prob = prob * torch.tensor([bool(s) for s in scripts], dtype=prob.dtype)  # (V,)
    texts = []
    for _ in range(n):  # pieces -> text -> the tokenizer's own pair encoding (as the task data gets it)
        lens = torch.randint(min_len, max_len + 1, (2,), generator=gen).tolist()
        a, b = (tokenizer.convert_tokens_to_string(tokenizer.convert_ids_to_tokens(
            sample_sentence(prob, first_prob, by_script, scripts, k, gen))).strip() for k in lens)
        texts.append((a, b))
    out = []
    for i in range(0, n, batch_size):
        chunk = texts[i:i + batch_size]
        enc = tokenizer([a for a, _ in chunk], [b for _, b in chunk] if pair else None, padding=True,
                        truncation=True, max_length=2 * max_len + 8, return_tensors="pt")
        out.append({k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")})
    return out


def calibration_batches(task_loader, n_task: int, tokenizer, n_pseudo: int = 0,
                        batch_size: int = 32) -> list[dict[str, torch.Tensor]]:
    """The first ``n_task`` task batches plus ``n_pseudo`` multilingual pseudo-sentence pairs.

    Static activation ranges calibrated on the English training batches alone clip other scripts'
    activations (zero-shot: the test languages are never seen); the pseudo-sentences from the
    tokenizer's unigram model cover ~100 languages without reading any task example. A tokenizer
    without unigram scores (e.g. WordPiece) falls back to the task batches, with a warning.

    >>> batches = calibration_batches(dm.train_dataloader(), 16, tokenizer, n_pseudo=128)
    """
    batches = list(islice(iter(task_loader), n_task)) if n_task > 0 else []
    if n_pseudo > 0:
        try:
            batches += datafree_batches(tokenizer, n=n_pseudo, batch_size=batch_size)
        except SdqModelError as e:
            log.warning("calibrate_multilingual skipped (%s): calibrating on task batches only", e)
    return batches


def prepare_datafree(model: nn.Module, qcfg: QuantConfig, tokenizer, opts: dict | None = None,
                     out_dir: str | Path | None = None) -> QuantReport:
    """Sensitivity probe on data-free inputs, keep the most sensitive modules FP within the budget (added to
    ``qcfg.skip`` as exact-name regexes), prepare ``model`` and calibrate it on the same inputs."""
    o = {**DEFAULTS, **(opts or {})}
    batches = datafree_batches(tokenizer, o["n"], o["batch_size"], o["min_len"], o["max_len"], o["pair"],
                               o["seed"])
    probe = batches[: -(-o["probe_n"] // o["batch_size"])]  # probe_n rounded up to whole batches
    rows = layer_sensitivity(model, qcfg, probe, weight_bits=o["probe_bits"], act_bits=o["probe_act_bits"],
                             only=o["probe_only"])
    keep_fp = budget_skip(rows, model, qcfg, o["budget"], o["budget"], scope=o["weight_scope"])
    if out_dir is not None:
        write_sensitivity(rows, Path(out_dir), title=f"sensitivity: one module at w{o['probe_bits']}")
    qcfg.skip = list(qcfg.skip) + [f"^{re.escape(name)}$" for name in keep_fp]
    report = prepare(model, qcfg)
    calibrate(model, batches, len(batches), learn=False)
    report.extra = {"datafree": {"kept_fp": keep_fp, "budget": o["budget"], "n_inputs": o["n"],
                                 "source": "tokenizer unigram pieces"}}
    log.info("data-free PTQ: kept FP %s; weights %.1f%%, activations %.1f%% quantized", keep_fp,
             100 * report.share_quantized, 100 * report.act_share)
    return report
