"""``load_quantized``: a runnable model from an export directory, verified against its sha256 manifest.

``backend="torch"`` dequantizes every packed tensor into a plain HF model built from the saved config
(bit-exact with the fake-quantized student's ``strip()`` weights, rotated ones rotated back as ``strip()``
does; activation quantization dropped);
``backend="int8"`` is that model with the student's activation quantization and int8 x int8 -> int32
GEMMs (:mod:`sdq.export.torch_int8`): its logits equal the student's; ``backend="onnx"`` runs the
directory's ``model.onnx`` with onnxruntime on CPU (integer GEMMs for per-tensor inputs, else Q/DQ + float
MatMuls; float rounding of its own). All answer
``model(input_ids, attention_mask).logits``.

>>> model = load_quantized("export/xnli_w8a8")                   # torch, dequantized weights
>>> exact = load_quantized("export/xnli_w8a8", backend="int8")    # torch int8 GEMMs, = the student
>>> fast = load_quantized("export/xnli_w8a8", backend="onnx")     # int8 onnxruntime
>>> exact = load_quantized("export/xnli_w8a8", backend="int8", compile=True)  # fused input quantization
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sdq.errors import SdqError
from sdq.export.ort_model import OrtModel
from sdq.export.pack import dequantize
from sdq.export.torch_int8 import int8_model
from sdq.export.writer import FORMAT, MANIFEST_FILE, META_FILE, ONNX_FILE, VERSION, WEIGHTS_FILE, sha256_file
from sdq.quant.rotation import rotate

BACKENDS = ("torch", "int8", "onnx")
V1_WEIGHTS_FILE = "model.safetensors"  # where format v1 kept the packed weights


def verify_dir(path: str | Path, need: tuple[str, ...] = (META_FILE, WEIGHTS_FILE, "config.json")) -> Path:
    """Check that ``path`` is a complete, untampered export (every manifest entry's size and sha256)."""
    d = Path(path)
    fix = "re-run `python -m sdq.export ckpt=... out=...`"
    if not (d / MANIFEST_FILE).is_file():
        raise SdqError(f"{d} is not an sdq export dir (no {MANIFEST_FILE}); {fix}")
    try:
        manifest = json.loads((d / MANIFEST_FILE).read_text())
        files = manifest["files"]
        assert manifest.get("format") == FORMAT
    except (OSError, ValueError, KeyError, TypeError, AssertionError):
        raise SdqError(f"{d / MANIFEST_FILE} is unreadable or not an sdq manifest; {fix}") from None
    for name in need:
        if name not in files:
            raise SdqError(f"export {d} lists no {name} in its manifest; {fix}")
    for name, info in files.items():
        f = d / name
        if not f.is_file():
            raise SdqError(f"export {d} is incomplete: {name} is missing; {fix}")
        if f.stat().st_size != info["bytes"]:
            raise SdqError(f"export file {f} is truncated or modified ({f.stat().st_size} bytes, manifest says "
                           f"{info['bytes']}); {fix}")
        if sha256_file(f) != info["sha256"]:
            raise SdqError(f"export file {f} does not match its sha256 in the manifest (tampered or corrupt); {fix}")
    return d


def read_export(path: str | Path, verify: bool = True) -> tuple[dict, dict[str, np.ndarray]]:
    """(sdq_export.json meta, every array of the packed weights file) of an export dir."""
    from safetensors.numpy import load_file  # lazy: only reading an export needs it

    d = verify_dir(path, need=(META_FILE, "config.json")) if verify else Path(path)
    fix = "re-export it with `python -m sdq.export ckpt=... out=...`"
    try:
        meta = json.loads((d / META_FILE).read_text())
        fmt, version = meta.get("format"), int(meta.get("version", 0))
    except (OSError, ValueError, TypeError, AttributeError):
        raise SdqError(f"{d / META_FILE} is missing or not valid sdq export JSON; {fix}") from None
    if fmt != FORMAT or version > VERSION:
        raise SdqError(f"{d / META_FILE} has format {fmt} v{version}; this sdq reads sdq-packed v1-v{VERSION}, "
                       "upgrade sdq")
    weights = d / str(meta.get("weights_file", WEIGHTS_FILE if version > 1 else V1_WEIGHTS_FILE))
    if verify and weights.name not in json.loads((d / MANIFEST_FILE).read_text())["files"]:
        raise SdqError(f"export {d} lists no {weights.name} in its manifest; {fix}")
    try:
        arrays = load_file(str(weights))
    except Exception as exc:  # noqa: BLE001 - safetensors' SafetensorError has no importable base
        raise SdqError(f"{weights} is unreadable ({type(exc).__name__}: {str(exc)[:120]}); {fix}") from None
    return meta, arrays


def plain_state(meta: dict, arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """The state_dict of the plain model: packed tensors dequantized (those packed in a rotated basis rotated
    back, as the student's ``folded_weight``), FP tensors as stored."""
    packed = meta["tensors"]
    owned = {f"{k}.{s}" for k in packed for s in ("codes", "scale", "zero_point", "offset", "codebook", "alpha")}
    state = {k: torch.from_numpy(np.array(v)) for k, v in arrays.items() if k not in owned}
    for key, m in packed.items():
        w = dequantize(m, arrays, key)
        state[key] = rotate(w, inverse=True) if m.get("rotated") else w
    return state


def build_plain(path: str | Path, meta: dict) -> nn.Module:
    """An untrained HF model of the saved class and config (no hub access)."""
    import transformers  # lazy: heavy, only building an HF model needs it

    cls = getattr(transformers, meta["architecture"], None)
    if cls is None:
        raise SdqError(f"model class {meta['architecture']} (from {path}) is not in this transformers "
                       f"{transformers.__version__}; install the version the export was made with")
    return cls(build_config(path))


def load_quantized(path: str | Path, backend: str = "torch", compile: bool = False, fuse: bool = True) -> nn.Module:
    """The exported model in eval mode on CPU (see module doc); SdqError on a bad/tampered dir.
    ``compile=True`` (``backend="int8"``): each int8 GEMM's input codes in one fused pass compiled by
    ``torch.compile`` (:mod:`sdq.int8.fused_codes`: the same codes, checked; ~20 s on first use).
    ``fuse=False`` (``backend="int8"``): keep Q/K/V as three GEMMs and GELU out of place
    (:mod:`sdq.export.int8_fuse`; both ways give the student's logits)."""
    if backend not in BACKENDS:
        raise SdqError(f"backend={backend!r} is unknown; use one of: {', '.join(BACKENDS)}")
    if compile and backend != "int8":
        raise SdqError(f"compile=True applies to backend='int8' only (got backend={backend!r}); drop it or use int8")
    d = Path(path)
    meta, arrays = read_export(d)
    if backend == "onnx":
        if not (d / ONNX_FILE).is_file():
            raise SdqError(f"{d} has no {ONNX_FILE}; export with onnx=true or use backend=torch")
        config = build_config(d)
        return OrtModel(d / ONNX_FILE, num_labels=getattr(config, "num_labels", None), config=config)
    model = build_plain(d, meta)
    try:
        model.load_state_dict(plain_state(meta, arrays), strict=True)
    except (RuntimeError, KeyError, ValueError) as exc:
        raise SdqError(f"export {d} does not match its config.json ({str(exc).splitlines()[0]}); "
                       "re-export it with `python -m sdq.export ckpt=... out=...`") from None
    if backend == "int8":
        return int8_model(model, meta, arrays, compile=compile, fuse=fuse)
    return model.eval()


def build_config(path: str | Path):
    """The saved HF config of an export dir; SdqError when it cannot be parsed."""
    import transformers  # lazy: heavy, only building an HF model needs it

    try:
        return transformers.AutoConfig.from_pretrained(str(path))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SdqError(f"{Path(path) / 'config.json'} is unreadable ({type(exc).__name__}); "
                       "re-export it with `python -m sdq.export ckpt=... out=...`") from None
