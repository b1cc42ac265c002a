"""``export_quantized``: pack a prepared student at its real bit-widths into a self-contained directory.

Layout of ``out_dir``:

- ``sdq_packed.safetensors``: packed codes (``<param>.codes`` uint8) with ``.scale`` / ``.zero_point`` /
  ``.offset`` / ``.codebook`` / ``.alpha``, and every FP tensor (LayerNorm, biases, skipped modules) as is;
- ``sdq_export.json``: format version, model class, per packed tensor scheme/bits/shape/granularity,
  the activation quantization of every Linear input;
- ``config.json``: the HF model config with its ``architectures``, ``id2label`` / ``label2id`` and an
  ``sdq_export`` note (whether transformers can load the dir, see :mod:`sdq.export.hf_copy`);
- ``model.safetensors`` (when :func:`~sdq.export.hf_copy.decide` allows it): the dequantized weights in HF
  naming, what ``AutoModelFor….from_pretrained(dir)`` and ``pipeline(model=dir)`` load;
- the tokenizer files (when a tokenizer is given) and ``README.md``, the model card (:mod:`sdq.export.model_card`);
- ``model.onnx`` (optional): the integer ONNX model (see :mod:`sdq.export.onnx_build`);
- ``manifest.json``: sha256 and size of every file above (checked by ``load_quantized``).

Everything is built in a temporary sibling directory and moved in only when complete, the manifest last:
a failed export leaves an earlier export in ``out_dir`` as it was. A non-empty ``out_dir`` that holds no
sdq export (a run dir, an HF model dir) is refused before anything is written.

>>> report = export_quantized(student, "export/xnli_w8a8", labels=("neg", "pos"), tokenizer=tok,
...                           check_batches=dev_batches)       # measures the transformers copy's agreement
>>> print(report)                        # size table per module kind, whole-model ratio, what loads it
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file
from torch import nn

from sdq.errors import SdqError
from sdq.export.collect import collect
from sdq.export.hf_copy import HF_WEIGHTS, decide, prediction_agreement
from sdq.export.model_card import CARD_FILE, write_card
from sdq.export.ort_model import OrtModel
from sdq.export.report import ExportReport
from sdq.export.run_info import RunInfo

FORMAT = "sdq-packed"
VERSION = 3  # v3: rotated weights / per-token inputs; v1 kept the packed weights in model.safetensors
STATIC_VERSION = 2  # what an export without them is written as, so that readers of v2 still load it
META_FILE, WEIGHTS_FILE, MANIFEST_FILE, ONNX_FILE = "sdq_export.json", "sdq_packed.safetensors", "manifest.json", \
    "model.onnx"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(out: Path) -> dict:
    """sha256 + size of every file in ``out`` except the manifest itself."""
    files = {p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size}
             for p in sorted(out.iterdir()) if p.is_file() and p.name != MANIFEST_FILE}
    (out / MANIFEST_FILE).write_text(json.dumps({"format": FORMAT, "version": _meta_version(out), "files": files},
                                                indent=1))
    return files


def _meta_version(out: Path) -> int:
    """The version ``sdq_export.json`` in ``out`` declares (the manifest carries it too); VERSION when it has none
    or is unreadable (reading the export then fails on the meta itself, with one SdqError)."""
    try:
        return int(json.loads((out / META_FILE).read_text())["version"])
    except (OSError, ValueError, KeyError, TypeError):
        return VERSION


def check_target(out: Path) -> None:
    """SdqError unless ``out`` is new, empty, or an earlier sdq export (which a new export replaces)."""
    if out.exists() and not out.is_dir():
        raise SdqError(f"export target {out} is a file; pass out=<dir>")
    if out.is_dir() and not ((out / META_FILE).exists() or (out / MANIFEST_FILE).exists()):
        names = sorted(p.name for p in out.iterdir())
        if names:
            shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
            raise SdqError(f"export target {out} is not empty and holds no sdq export ({shown}); pass out=<new "
                           "or empty dir> - nothing was written")


def export_quantized(model: nn.Module, out_dir: str | Path, onnx: bool | str = "auto", *,
                     labels: tuple[str, ...] | list[str] | None = None, tokenizer=None, hf_copy: bool | str = "auto",
                     check_batches: list[dict] | None = None, info: RunInfo | None = None) -> ExportReport:
    """Pack the fake-quantized ``model`` (in memory, prepared by sdq.quant) into ``out_dir``.

    ``onnx``: also write the integer ONNX model (``"auto"``: when some Linear has integer weights and
    activations, i.e. a W8A8-style student). ``labels``: the class names (config.json ``id2label``);
    ``tokenizer``: saved beside the model; ``hf_copy`` (auto | True | False) and ``check_batches``: the
    transformers copy and the batches its agreement with the student is measured on
    (:mod:`sdq.export.hf_copy`; the ONNX model's agreement is measured on them too); ``info``: the run
    facts of the model card. Returns the :class:`ExportReport` (sizes per module kind, what loads it).
    """
    out = Path(out_dir)
    check_target(out)
    if labels is not None and len(labels) != getattr(getattr(model, "config", None), "num_labels", len(labels)):
        raise SdqError(f"{len(labels)} label names ({', '.join(map(str, labels[:5]))}...) for a model with "
                       f"{model.config.num_labels} outputs; pass the run's label list")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=out.parent))
    except OSError as exc:
        raise SdqError(f"cannot create export dir {out} ({exc.strerror}); pass out=<writable dir>") from None
    try:
        report = _write(model, tmp, onnx, labels, tokenizer, hf_copy, check_batches)
        write_card(tmp / CARD_FILE, report, info, labels)
        report.files = {k: v["bytes"] for k, v in write_manifest(tmp).items()}  # this export's files only
        out.mkdir(exist_ok=True)
        # invalid from here until the new manifest lands; no stale onnx, transformers copy or tokenizer
        for stale in {MANIFEST_FILE, ONNX_FILE, HF_WEIGHTS, *_manifest_names(out)} - set(report.files):
            (out / stale).unlink(missing_ok=True)
        for name in report.files:
            os.replace(tmp / name, out / name)
        os.replace(tmp / MANIFEST_FILE, out / MANIFEST_FILE)  # last: the dir loads again
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report.out_dir = str(out)
    if report.onnx:
        report.onnx["path"] = str(out / ONNX_FILE)
    return report


def _manifest_names(out: Path) -> list[str]:
    """The files an earlier export in ``out`` listed (none when there is no readable manifest)."""
    try:
        return [n for n in json.loads((out / MANIFEST_FILE).read_text())["files"] if "/" not in n]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def _write(model: nn.Module, out: Path, onnx: bool | str, labels=None, tokenizer=None, hf_copy: bool | str = "auto",
           check_batches: list[dict] | None = None) -> ExportReport:
    """Every export file except the card and the manifest, into the (temporary) directory ``out``."""
    col = collect(model)
    plain = col.plain
    plain.config.architectures = [type(plain).__name__]
    if labels is not None:
        plain.config.id2label = {i: str(n) for i, n in enumerate(labels)}
        plain.config.label2id = {str(n): i for i, n in enumerate(labels)}
    report = ExportReport(out_dir=str(out), quantized_inputs=len(col.acts),
                          attention_quantized=col.attention_quantized)
    arrays: dict[str, np.ndarray] = {}
    meta_tensors = {}
    for key, (meta, packed) in col.tensors.items():
        arrays.update(packed)
        meta_tensors[key] = meta
        report.add(key, 4 * int(np.prod(meta["shape"])), sum(a.nbytes for a in packed.values()))
        report.bits[key] = meta["bits"]
        report.n_quantized += 1
    for key, t in plain.state_dict().items():
        if key in meta_tensors:
            continue
        a = t.detach().cpu().contiguous().numpy()
        arrays[key] = a
        report.add(key, 4 * a.size if a.dtype.kind == "f" else a.nbytes, a.nbytes)
        report.n_fp += 1
    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(out / WEIGHTS_FILE))
    decision = decide(model, plain, bool(col.acts) or col.attention_quantized, check_batches, hf_copy)
    report.hf_copy = decision.to_dict()
    plain.config.sdq_export = decision.config_note()
    if decision.written:
        from safetensors.torch import save_file as save_torch  # the HF naming and dtypes, as save_pretrained

        save_torch({k: t.detach().cpu().contiguous() for k, t in plain.state_dict().items()}, str(out / HF_WEIGHTS),
                   metadata={"format": "pt"})
    plain.config.save_pretrained(str(out))
    if tokenizer is not None:
        if len(tokenizer) > plain.config.vocab_size:
            raise SdqError(f"the tokenizer has {len(tokenizer)} tokens, the model's vocabulary {plain.config.vocab_size}: "
                           "not the run's tokenizer; pass the tokenizer of the student's backbone")
        tokenizer.save_pretrained(str(out))
    dynamic = (any(a["granularity"] == "token" for a in col.acts.values())  # rotated inputs: rotated codes
               or any(m.get("rotated") for m in meta_tensors.values()))  # (collect refuses them on FP weights)
    meta = {"format": FORMAT, "version": VERSION if dynamic else STATIC_VERSION,
            "architecture": type(plain).__name__, "weights_file": WEIGHTS_FILE, "tensors": meta_tensors,
            "acts": col.acts, "attention_quantized": col.attention_quantized,
            "sizes": {"fp32": report.fp32_bytes, "packed": report.packed_bytes}}
    (out / META_FILE).write_text(json.dumps(meta, indent=1))
    want_onnx = onnx is True or (onnx == "auto" and bool(col.acts))
    if want_onnx:
        from sdq.export.onnx_build import build_onnx  # lazy: imports onnx, only exports with ONNX need it

        info = build_onnx(plain, meta, arrays, out / ONNX_FILE)
        report.onnx = {"path": str(out / ONNX_FILE), "bytes": os.path.getsize(out / ONNX_FILE), "ops": info,
                       "per_channel_acts": sum(a["granularity"] == "channel" for a in col.acts.values())}
        if check_batches:
            agree, n = prediction_agreement(model, OrtModel(out / ONNX_FILE), check_batches)
            report.onnx.update(agreement_with_student=agree, check_examples=n)
    return report
