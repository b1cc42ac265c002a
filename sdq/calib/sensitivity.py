"""Per-module quantization sensitivity: quantize ONE module alone to low bits, measure the damage.

For every quantizable module (Linear weights + inputs, embedding tables) of an FP model: swap in its
fake-quantized version (weights at ``weight_bits``, inputs at ``act_bits`` when the config quantizes
activations), calibrate on the given batches, and measure KL(FP || quantized) of the output
distribution, prediction agreement with FP, and accuracy when the batches carry ``labels``; then
swap the FP module back (parameters are shared, never copied). ``kind_sensitivity`` does the same
for all modules of one kind (query/key/value/attn_out/ffn_in/ffn_out/embeddings/head) at once.
``budget_skip`` turns the ranking into the list of modules kept FP such that at least ``weight_budget``
of all parameters and ``act_budget`` of all Linear input features stay quantized.

>>> rows = layer_sensitivity(model, qcfg, batches, weight_bits=4)
>>> write_sensitivity(rows, Path("out"))                 # sensitivity.csv / .md / .png
>>> keep_fp = budget_skip(rows, model, qcfg, 0.95, 0.95)

Command line: :mod:`sdq.calib.sensitivity_cli`.
"""

from __future__ import annotations

import copy
import csv
import logging
import re
from pathlib import Path

import torch
import torch.nn.functional as TF
from torch import nn

from sdq.quant.config import QuantConfig, QuantizerConfig
from sdq.quant.modules import QuantEmbedding, QuantLinear
from sdq.quant.prepare import set_phase

KINDS = (("query", r"(query|q_proj)$"), ("key", r"(key|k_proj)$"), ("value", r"(value|v_proj)$"),
         ("attn_out", r"attention\.output\.dense$|o_proj$"), ("ffn_in", r"intermediate\.dense$"),
         ("ffn_out", r"output\.dense$"), ("embeddings", r"embeddings"), ("head", r"classifier|pooler"))
log = logging.getLogger(__name__)
DEFAULT_W = QuantizerConfig(bits=8, granularity="channel")
DEFAULT_E = QuantizerConfig(bits=8, granularity="row")


def module_kind(name: str) -> str:
    """``query``/``key``/``value``/``attn_out``/``ffn_in``/``ffn_out``/``embeddings``/``head`` or ``other``."""
    return next((k for k, pat in KINDS if re.search(pat, name)), "other")


def layer_index(name: str) -> int | None:
    m = re.search(r"layers?\.(\d+)\.", name)
    return int(m.group(1)) if m else None


def candidates(model: nn.Module, qcfg: QuantConfig) -> list[dict]:
    """Modules ``prepare(model, qcfg)`` would quantize: name, kind, layer, weight params, act features."""
    out = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            w = qcfg.weight_config(name, qcfg.weight) is not None
            a = qcfg.act is not None and not qcfg.skipped(name)
            if w or a:
                out.append({"name": name, "kind": module_kind(name), "layer": layer_index(name),
                            "params": mod.weight.numel() if w else 0, "act": mod.in_features if a else 0})
        elif isinstance(mod, nn.Embedding) and qcfg.weight_config(name, qcfg.embedding) is not None:
            out.append({"name": name, "kind": "embeddings", "layer": None, "params": mod.weight.numel(), "act": 0})
    return out


def _logits(model: nn.Module, batch: dict) -> torch.Tensor:
    inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    return model(**inputs).logits.float()


def _flat(logits: torch.Tensor, batch: dict) -> torch.Tensor:
    """(N, C) items: sequence logits (B, C) as they are, token logits (B, T, C) at unmasked positions."""
    if logits.dim() == 3:
        return logits[batch["attention_mask"].bool()]
    return logits


@torch.no_grad()
def compare(model: nn.Module, batches: list[dict], ref: list[torch.Tensor]) -> dict:
    """KL(ref || model) mean per item, agreement (%) with ref, accuracy (%) when batches carry labels."""
    kl, agree, correct, n, n_lab = 0.0, 0, 0, 0, 0
    for batch, r in zip(batches, ref, strict=True):
        q, r = _flat(_logits(model, batch), batch).double(), _flat(r, batch).double()  # (N, C)
        kl += TF.kl_div(q.log_softmax(-1), r.log_softmax(-1), log_target=True, reduction="sum").item()
        agree += (q.argmax(-1) == r.argmax(-1)).sum().item()
        n += q.shape[0]
        if "labels" in batch:
            lab = batch["labels"].reshape(-1) if q.shape[0] == batch["labels"].numel() else batch["labels"]
            valid = lab >= 0
            correct += (q.argmax(-1)[valid] == lab[valid]).sum().item()
            n_lab += int(valid.sum())
    out = {"kl": kl / max(n, 1), "agree": 100.0 * agree / max(n, 1)}
    if n_lab:
        out["acc"] = 100.0 * correct / n_lab
    return out


def _swap(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, child)
    setattr(parent, child, new)
    return old


@torch.no_grad()
def probe(model: nn.Module, names: list[str], qcfg: QuantConfig, batches: list[dict], ref: list[torch.Tensor],
          weight_bits: int = 4, act_bits: int | None = 8) -> dict:
    """Quantize only ``names`` (weights at weight_bits, inputs at act_bits if qcfg.act), calibrate on
    ``batches``, compare with ``ref`` logits, restore the FP modules. Returns :func:`compare`'s dict."""
    wcfg = (qcfg.weight or DEFAULT_W).replace(bits=weight_bits)
    ecfg = (qcfg.embedding or DEFAULT_E).replace(bits=weight_bits)
    acfg = qcfg.act.replace(bits=act_bits or qcfg.act.bits) if qcfg.act is not None else None
    old = {}
    for name in names:
        mod = model.get_submodule(name)
        if isinstance(mod, nn.Embedding):
            new = QuantEmbedding.from_embedding(mod, ecfg)
        else:  # on a copy: from_linear may change the weight in place (quant.act.rotate), the FP module must not
            w = qcfg.weight_config(name, wcfg) is not None
            new = QuantLinear.from_linear(copy.deepcopy(mod), wcfg if w else None, None if qcfg.skipped(name) else acfg)
        old[name] = _swap(model, name, new)
    try:
        was = model.training
        model.eval()
        set_phase(model, "calibrate")
        for batch in batches:
            _logits(model, batch)
        set_phase(model, "frozen")
        out = compare(model, batches, ref)
        model.train(was)
    finally:
        for name, mod in old.items():
            _swap(model, name, mod)
    return out


@torch.no_grad()
def layer_sensitivity(model: nn.Module, qcfg: QuantConfig, batches: list[dict], weight_bits: int = 4,
                      act_bits: int | None = 8, only: str | None = None) -> list[dict]:
    """One row per candidate module (``only``: regex filter): name, kind, layer, params, act, kl, agree[, acc]."""
    model.eval()
    ref = [_logits(model, b) for b in batches]
    rows = [c for c in candidates(model, qcfg) if only is None or re.search(only, c["name"])]
    for i, row in enumerate(rows):
        row.update(probe(model, [row["name"]], qcfg, batches, ref, weight_bits, act_bits))
        log.info("sensitivity %d/%d %s: KL %.5f, agree %.1f%%", i + 1, len(rows), row["name"], row["kl"],
                 row["agree"])
    return rows


@torch.no_grad()
def kind_sensitivity(model: nn.Module, qcfg: QuantConfig, batches: list[dict], weight_bits: int = 4,
                     act_bits: int | None = 8) -> list[dict]:
    """One row per module kind: all modules of that kind quantized together."""
    model.eval()
    ref = [_logits(model, b) for b in batches]
    by_kind: dict[str, list[dict]] = {}
    for c in candidates(model, qcfg):
        by_kind.setdefault(c["kind"], []).append(c)
    rows = []
    for kind, cs in by_kind.items():
        row = {"name": f"all {kind}", "kind": kind, "layer": None, "params": sum(c["params"] for c in cs),
               "act": sum(c["act"] for c in cs)}
        row.update(probe(model, [c["name"] for c in cs], qcfg, batches, ref, weight_bits, act_bits))
        rows.append(row)
    return rows


def budget_skip(rows: list[dict], model: nn.Module, qcfg: QuantConfig, weight_budget: float = 0.95,
                act_budget: float = 0.95, score: str = "kl", scope: str = "model") -> list[str]:
    """Modules to keep FP, most sensitive (highest ``score``) first, while the quantized share of all
    parameters (``scope="linear"``: of all Linear weights) stays >= weight_budget and of all Linear input
    features >= act_budget (greedy: a module that would break the budget is passed over, a cheaper less
    sensitive one may still fit)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    a_total = sum(m.in_features for m in linears)
    cands = {c["name"]: c for c in candidates(model, qcfg)}
    if scope == "linear":
        p_total = sum(m.weight.numel() for m in linears)
        cands = {n: {**c, "params": 0 if c["kind"] == "embeddings" else c["params"]} for n, c in cands.items()}
    else:
        p_total = sum(p.numel() for p in model.parameters())
    q_w = sum(c["params"] for c in cands.values())
    q_a = sum(c["act"] for c in cands.values())
    check_act = qcfg.act is not None
    keep = []
    for row in sorted(rows, key=lambda r: -r[score]):
        c = cands.get(row["name"])
        if c is None or not row[score] > 0:
            continue
        w_ok = (q_w - c["params"]) >= weight_budget * p_total
        a_ok = not check_act or (q_a - c["act"]) >= act_budget * a_total
        if w_ok and a_ok:
            keep.append(c["name"])
            q_w, q_a = q_w - c["params"], q_a - c["act"]
    return keep


def table(rows: list[dict]) -> str:
    """Markdown table of the rows (as given) and the per-kind mean/max of the per-module rows."""
    has_acc = any("acc" in r for r in rows)
    head = "| module | kind | layer | params | KL | agree % |" + (" acc % |" if has_acc else "")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lines.append(f"| {r['name']} | {r['kind']} | {'' if r['layer'] is None else r['layer']} | "
                     f"{r['params']:,} | {r['kl']:.5f} | {r['agree']:.1f} |"
                     + (f" {r.get('acc', float('nan')):.1f} |" if has_acc else ""))
    kinds: dict[str, list[float]] = {}
    for r in rows:
        if not r["name"].startswith("all "):
            kinds.setdefault(r["kind"], []).append(r["kl"])
    lines += ["", "| kind | modules | mean KL | max KL |", "|---|---|---|---|"]
    for k, v in sorted(kinds.items(), key=lambda kv: -max(kv[1])):
        lines.append(f"| {k} | {len(v)} | {sum(v) / len(v):.5f} | {max(v):.5f} |")
    return "\n".join(lines) + "\n"


def write_sensitivity(rows: list[dict], out_dir: Path, title: str = "sensitivity") -> list[Path]:
    """sensitivity.csv, sensitivity.md (table) and sensitivity.png (KL per module, coloured by kind)."""
    import matplotlib  # lazy: plotting library, only needed when a plot is written

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: after matplotlib.use("Agg")

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    keys = ["name", "kind", "layer", "params", "act", "kl", "agree"] + (["acc"] if any("acc" in r for r in rows)
                                                                       else [])
    with open(out_dir / "sensitivity.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    (out_dir / "sensitivity.md").write_text(f"# {title}\n\n" + table(rows))
    kinds = sorted({r["kind"] for r in rows})
    colors = {k: plt.get_cmap("tab10")(i % 10) for i, k in enumerate(kinds)}
    fig, ax = plt.subplots(figsize=(max(6.0, 0.12 * len(rows)), 3.5))
    ax.bar(range(len(rows)), [max(r["kl"], 1e-9) for r in rows], color=[colors[r["kind"]] for r in rows])
    ax.set_yscale("log")
    ax.set_xlabel("module (model order)")
    ax.set_ylabel("KL(FP || quantized)")
    ax.set_title(title)
    ax.legend(handles=[plt.Rectangle((0, 0), 1, 1, color=colors[k]) for k in kinds], labels=kinds, fontsize=7,
              ncol=4)
    fig.tight_layout()
    fig.savefig(out_dir / "sensitivity.png", dpi=120)
    plt.close(fig)
    return [out_dir / f"sensitivity.{e}" for e in ("csv", "md", "png")]

