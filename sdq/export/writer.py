"""``export_quantized``: pack a prepared student at its real bit-widths into a self-contained directory.

Layout of ``out_dir``:

- ``model.safetensors``: packed codes (``<param>.codes`` uint8) with ``.scale`` / ``.zero_point`` /
  ``.offset`` / ``.codebook`` / ``.alpha``, and every FP tensor (LayerNorm, biases, skipped modules) as is;
- ``sdq_export.json``: format version, model class, per packed tensor scheme/bits/shape/granularity,
  the activation quantization of every Linear input;
- ``config.json``: the HF model config (rebuilds the architecture with no training code);
- ``model.onnx`` (optional): the integer ONNX model (see :mod:`sdq.export.onnx_build`);
- ``manifest.json``: sha256 and size of every file above (checked by ``load_quantized``).

Everything is built in a temporary sibling directory and moved in only when complete, the manifest last:
a failed export leaves an earlier export in ``out_dir`` as it was. A non-empty ``out_dir`` that holds no
sdq export (a run dir, an HF model dir) is refused before anything is written.

>>> report = export_quantized(student, "export/xnli_w8a8")
>>> print(report)                        # size table per module kind, whole-model ratio
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
from sdq.export.report import ExportReport

FORMAT = "sdq-packed"
VERSION = 1
META_FILE, WEIGHTS_FILE, MANIFEST_FILE, ONNX_FILE = "sdq_export.json", "model.safetensors", "manifest.json", \
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
    (out / MANIFEST_FILE).write_text(json.dumps({"format": FORMAT, "version": VERSION, "files": files}, indent=1))
    return files


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


def export_quantized(model: nn.Module, out_dir: str | Path, onnx: bool | str = "auto") -> ExportReport:
    """Pack the fake-quantized ``model`` (in memory, prepared by sdq.quant) into ``out_dir``.

    ``onnx``: also write the integer ONNX model (``"auto"``: when some Linear has integer weights and
    activations, i.e. a W8A8-style student). Returns the :class:`ExportReport` (sizes per module kind).
    """
    out = Path(out_dir)
    check_target(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=out.parent))
    except OSError as exc:
        raise SdqError(f"cannot create export dir {out} ({exc.strerror}); pass out=<writable dir>") from None
    try:
        report = _write(model, tmp, onnx)
        report.files = {k: v["bytes"] for k, v in write_manifest(tmp).items()}  # this export's files only
        out.mkdir(exist_ok=True)
        for stale in (MANIFEST_FILE, ONNX_FILE):  # invalid from here until the new manifest lands; no stale onnx
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


def _write(model: nn.Module, out: Path, onnx: bool | str) -> ExportReport:
    """Every export file except the manifest, into the (temporary) directory ``out``."""
    col = collect(model)
    plain = col.plain
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
    plain.config.save_pretrained(str(out))
    meta = {"format": FORMAT, "version": VERSION, "architecture": type(plain).__name__,
            "tensors": meta_tensors, "acts": col.acts, "attention_quantized": col.attention_quantized,
            "sizes": {"fp32": report.fp32_bytes, "packed": report.packed_bytes}}
    (out / META_FILE).write_text(json.dumps(meta, indent=1))
    want_onnx = onnx is True or (onnx == "auto" and bool(col.acts))
    if want_onnx:
        from sdq.export.onnx_build import build_onnx  # lazy: imports onnx, only exports with ONNX need it

        info = build_onnx(plain, meta, arrays, out / ONNX_FILE)
        report.onnx = {"path": str(out / ONNX_FILE), "bytes": os.path.getsize(out / ONNX_FILE), "ops": info}
    return report
