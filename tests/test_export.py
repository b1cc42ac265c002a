"""export_quantized / load_quantized / check_agreement on the tiny XLM-R: exact weights, logits, sizes,
tampered directories."""

import copy
import json

import numpy as np
import onnx
import pytest
import torch

from sdq.errors import SdqError
from sdq.export import check_agreement, export_quantized, load_quantized, module_kind
from sdq.export.writer import MANIFEST_FILE, WEIGHTS_FILE
from sdq.quant import QuantConfig, prepare, set_phase, strip

W8A8 = {"weight": {"bits": 8, "granularity": "channel"},
        "act": {"bits": 8, "symmetric": False, "observer": "ema"},
        "embedding": {"bits": 8, "granularity": "row"}}
W4 = {"weight": {"bits": 4, "granularity": "channel"}, "embedding": {"bits": 4, "granularity": "row"}}
G32 = {"weight": {"bits": 4, "granularity": "group", "group_size": 32}, "embedding": {"bits": 8, "granularity": "row"}}
LSQ2_G32 = {"weight": {"bits": 2, "scheme": "lsq", "observer": "mse", "granularity": "group", "group_size": 32},
            "embedding": {"bits": 8, "granularity": "row"}}  # the w4a8_g32 / w2a8_g32 weight layouts
MIXED = {"weight": {"bits": 2, "scheme": "kmeans", "granularity": "channel", "kmeans_weighting": "act"},
         "embedding": {"bits": 2, "scheme": "binary", "granularity": "row"},
         "overrides": {r"layer\.1\.output": {"bits": 3, "scheme": "uniform"}}}


def build_model(head="seq_cls", labels=3) -> torch.nn.Module:
    """The 2-layer hidden-32 XLM-R ("tiny") with a 1000-token vocabulary, random init (fast tests)."""
    from transformers import (
        XLMRobertaConfig,
        XLMRobertaForSequenceClassification,
        XLMRobertaForTokenClassification,
    )

    cfg = XLMRobertaConfig(vocab_size=1000, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=66, num_labels=labels)
    cls = XLMRobertaForTokenClassification if head == "token_cls" else XLMRobertaForSequenceClassification
    torch.manual_seed(0)
    return cls(cfg).eval()


def batch(n=4, t=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 1000, (n, t), generator=g)
    mask = torch.ones_like(ids)
    mask[0, t // 2:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def make_student(quant: dict, head="seq_cls", labels=3) -> torch.nn.Module:
    m = build_model(head, labels)
    prepare(m, QuantConfig.from_dict(quant))
    set_phase(m, "calibrate")
    with torch.no_grad():
        m(**batch(8, 16, seed=1))
    set_phase(m, "frozen")
    return m


@pytest.fixture(scope="module")
def w8a8(tmp_path_factory):
    student = make_student(W8A8)
    out = tmp_path_factory.mktemp("w8a8")
    return student, out, export_quantized(student, out)


@pytest.mark.parametrize("quant", [W4, G32, LSQ2_G32, MIXED],
                         ids=["w4", "w4-group32", "lsq2-group32", "kmeans2-binary2-uniform3"])
def test_loaded_weights_are_the_stripped_students_bit_exact(tmp_path, quant):
    student = make_student(quant, head="token_cls", labels=5)
    report = export_quantized(student, tmp_path)
    assert report.onnx is None  # weight-only: no integer activations, no ONNX by default
    loaded = load_quantized(tmp_path)
    ref = strip(copy.deepcopy(student)).state_dict()
    got = loaded.state_dict()
    assert set(ref) == set(got)
    for k in ref:
        assert torch.equal(ref[k], got[k]), k
    b = batch()
    with torch.no_grad():  # weight-only fake quant == plain model with the effective weights
        torch.testing.assert_close(loaded(**b).logits, student(**b).logits, atol=1e-6, rtol=0)


def test_w8a8_onnx_reproduces_student_logits(w8a8):
    student, out, report = w8a8
    assert report.onnx["ops"]["integer"] + 3 * report.onnx["ops"]["qattention"] == 12  # 2 layers x 6 Linear
    assert report.onnx["ops"]["int8_embedding"]
    fast = load_quantized(out, backend="onnx")
    b = batch()
    with torch.no_grad():
        torch.testing.assert_close(fast(**b).logits, student(**b).logits, atol=1e-4, rtol=0)
    res = check_agreement(student, fast, [batch(seed=s) for s in range(3)])
    assert res["ok"] and res["metric_diff"] == 0.0 and res["max_logit_diff"] < 1e-4
    # idle ORT worker threads must not spin: they would steal the cores torch runs on in the same process
    assert fast.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"


@pytest.mark.parametrize("u8", [False, True], ids=["s8_weights", "u8_weights"])
def test_w8a8_onnx_both_weight_encodings_reproduce_the_student(w8a8, u8):
    """MatMulIntegerToFloat and QAttention run with the int8 weights as written and rewritten as uint8 + 128."""
    from sdq.export.ort_model import OrtModel

    student, out, _ = w8a8
    fast = OrtModel(out / "model.onnx", u8_weights=u8)
    b = batch()
    with torch.no_grad():
        torch.testing.assert_close(fast(**b).logits, student(**b).logits, atol=1e-4, rtol=0)


def test_u8_weight_rewrite_is_exact_where_u8s8_saturates(tmp_path):
    """uint8 + 128 weights give the exact integer product on any CPU; a u8 x s8 kernel built on vpmaddubsw
    (x86 without VNNI) saturates its int16 pair sums on codes like these (255 * 127 * 2 > 32767)."""
    from onnx import TensorProto, helper, numpy_helper

    from sdq.export.ort_model import ort_session, s8_weights_to_u8

    rng = np.random.default_rng(0)
    k, n = 64, 16
    a = rng.integers(200, 256, (8, k)).astype(np.uint8)
    w = rng.choice(np.array([-127, 127], np.int8), (k, n))
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array(1.0, np.float32), "sa"),
             numpy_helper.from_array(np.ones(n, np.float32), "sw"), numpy_helper.from_array(np.array(0, np.uint8), "za"),
             numpy_helper.from_array(np.zeros(n, np.int8), "zw")]
    node = helper.make_node("MatMulIntegerToFloat", ["a", "w", "sa", "sw", "za", "zw"], ["y"], domain="com.microsoft")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("a", TensorProto.UINT8, [None, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, n])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    path = tmp_path / "mm.onnx"
    onnx.save(model, str(path))
    exact = (a.astype(np.int64) @ w.astype(np.int64)).astype(np.float32)  # |values| < 2^24: exact in fp32
    y = ort_session(path, 1, u8_weights=True).run(None, {"a": a})[0]
    assert np.array_equal(y, exact)
    assert s8_weights_to_u8(model) == 1 and s8_weights_to_u8(model) == 0  # once: then the weights are uint8
    # 7-bit codes (within [-64, 64]) stay int8: u8 x s8 cannot saturate on them (2 * 255 * 64 <= 32767)
    w7 = rng.choice(np.array([-64, 64], np.int8), (k, n))
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(w7, "w"))
    model.graph.initializer[-1].CopyFrom(numpy_helper.from_array(np.zeros(n, np.int8), "zw"))
    onnx.save(model, str(path))
    a[:] = 255
    y = ort_session(path, 1, u8_weights=True).run(None, {"a": a})[0]
    assert np.array_equal(y, (a.astype(np.int64) @ w7.astype(np.int64)).astype(np.float32))
    assert s8_weights_to_u8(model) == 0 and model.graph.initializer[0].data_type == TensorProto.INT8


def test_w7a8_export_keeps_int8_onnx_weights_and_the_students_logits(tmp_path):
    """7-bit weights (quant=w7a8_int8): the ONNX file's int8 weights are exact on u8 x s8 anywhere, so no
    session rewrites them; the int8 backend stays bit-identical on onnxruntime's kernel and on the default."""
    from sdq.export.ort_model import OrtModel, s8_weights_to_u8
    from sdq.int8 import Int8Linear, use_int8_kernel

    student = make_student({**W8A8, "weight": {"bits": 7, "granularity": "channel"}})
    export_quantized(student, tmp_path)
    model = onnx.load(str(tmp_path / "model.onnx"))
    assert s8_weights_to_u8(model) == 0  # every MatMulIntegerToFloat / QAttention weight stays int8
    fast = OrtModel(tmp_path / "model.onnx", u8_weights=True)
    exact = load_quantized(tmp_path, backend="int8")
    b = batch()
    with torch.no_grad(), use_int8_kernel("ort"):
        ref = student(**b).logits
        assert torch.equal(exact(**b).logits, ref)
        torch.testing.assert_close(fast(**b).logits, ref, atol=1e-4, rtol=0)
    with torch.no_grad():  # the default kernel here (oneDNN u8 x s8 on CPUs without VNNI, else _int_mm)
        assert torch.equal(exact(**b).logits, ref)
    gemms = [m._gemm() for m in exact.modules() if isinstance(m, Int8Linear)]
    assert len(gemms) == 8  # per layer: Q/K/V fused, attention out, FFN x 2


def test_int8_backend_with_compiled_input_codes_equals_the_student(tmp_path):
    """load_quantized(..., compile=True): the input codes in one compiled pass, the same logits."""
    from sdq.int8 import Int8Linear
    from sdq.int8.fused_codes import compiled_codes

    student = make_student({**W8A8, "weight": {"bits": 7, "granularity": "channel"}})
    export_quantized(student, tmp_path, onnx=False)
    with pytest.raises(SdqError, match="compile=True applies to backend='int8' only"):
        load_quantized(tmp_path, backend="torch", compile=True)
    if compiled_codes() is None:
        pytest.skip("torch.compile (inductor) does not run here")
    exact = load_quantized(tmp_path, backend="int8", compile=True)
    assert all(m.compiled for m in exact.modules() if isinstance(m, Int8Linear))
    with torch.no_grad():
        for s in range(2):
            b = batch(n=2 + s, t=7 + 5 * s, seed=20 + s)
            assert torch.equal(exact(**b).logits, student(**b).logits)


def test_size_accounting(w8a8):
    student, out, report = w8a8
    plain = strip(copy.deepcopy(student))
    fp32 = {k: 0 for k in report.fp32_bytes}
    for name, p in plain.state_dict().items():
        fp32[module_kind(name)] += 4 * p.numel()
    assert report.fp32_bytes == fp32
    q = plain.roberta.encoder.layer[0].attention.self.query.weight  # (32, 32) int8 + fp32 scale per row
    meta = json.loads((out / "sdq_export.json").read_text())["tensors"]
    assert meta["roberta.encoder.layer.0.attention.self.query.weight"]["bits"] == 8
    word = plain.roberta.embeddings.word_embeddings.weight  # (V, 32): 1 byte per value + 4 per row
    emb_packed = report.packed_bytes["embeddings"]
    others = sum(4 * p.numel() for n, p in plain.state_dict().items()
                 if module_kind(n) == "embeddings" and n.endswith("LayerNorm.weight") | n.endswith("LayerNorm.bias"))
    pos, typ = plain.roberta.embeddings.position_embeddings.weight, plain.roberta.embeddings.token_type_embeddings.weight
    assert emb_packed == others + sum(t.numel() + 4 * t.shape[0] for t in (word, pos, typ))
    assert report.ratio == pytest.approx(report.fp32_total / report.packed_total)
    assert q.shape == (32, 32) and "total" in report.table()


def test_module_kind():
    assert module_kind("roberta.embeddings.word_embeddings.weight") == "embeddings"
    assert module_kind("roberta.encoder.layer.3.attention.self.query.weight") == "attention"
    assert module_kind("roberta.encoder.layer.3.attention.output.dense.weight") == "attention"
    assert module_kind("roberta.encoder.layer.3.intermediate.dense.weight") == "ffn"
    assert module_kind("roberta.encoder.layer.3.output.dense.bias") == "ffn"
    assert module_kind("classifier.out_proj.weight") == "other"


def _copy_export(src, dst):
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "no_manifest", "bad_manifest"])
def test_tampered_or_truncated_export_is_one_clear_error(w8a8, tmp_path, damage):
    _, out, _ = w8a8
    d = _copy_export(out, tmp_path / "copy")
    f = d / WEIGHTS_FILE
    data = bytearray(f.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
        f.write_bytes(bytes(data))
        match = "sha256"
    elif damage == "truncate":
        f.write_bytes(bytes(data[: len(data) // 3]))
        match = "truncated"
    elif damage == "delete":
        f.unlink()
        match = "missing"
    elif damage == "no_manifest":
        (d / MANIFEST_FILE).unlink()
        match = "not an sdq export"
    else:
        (d / MANIFEST_FILE).write_text("{not json")
        match = "unreadable"
    for backend in ("torch", "onnx"):
        with pytest.raises(SdqError, match=match):
            load_quantized(d, backend=backend)


def test_check_agreement_fails_beyond_tolerance(w8a8):
    student, _, _ = w8a8

    class Flipped(torch.nn.Module):  # same logits, reversed classes: predictions differ
        def forward(self, ids, mask):
            return type("O", (), {"logits": student(input_ids=ids, attention_mask=mask).logits.flip(-1)})()

    batches = [batch(seed=s) for s in range(2)]
    res = check_agreement(student, Flipped(), batches, raise_on_fail=False)
    assert not res["ok"] and res["max_logit_diff"] > 0
    with pytest.raises(SdqError, match="disagrees"):
        check_agreement(student, Flipped(), batches)
    labelled = [{**b, "labels": torch.zeros(b["input_ids"].shape[0], dtype=torch.long)} for b in batches]
    res = check_agreement(student, student, labelled)
    preds = torch.cat([student(**batch(seed=s)).logits.argmax(-1) for s in range(2)])
    assert res["student"] == pytest.approx(100.0 * float(np.mean(preds.numpy() == 0)))


def test_export_of_an_unprepared_model_is_an_error(tmp_path):
    with pytest.raises(SdqError, match="no sdq quantizers"):
        export_quantized(build_model(), tmp_path)


def test_non_uniform_weights_with_int8_acts_run_as_qdq_in_onnx(tmp_path):
    quant = {"weight": {"bits": 3, "scheme": "kmeans", "granularity": "channel"},
             "act": {"bits": 6, "symmetric": False, "observer": "ema"}}
    student = make_student(quant)
    report = export_quantized(student, tmp_path)
    assert report.onnx["ops"]["act_qdq"] == 12 and report.onnx["ops"]["integer"] == 0
    b = batch()
    with torch.no_grad():
        torch.testing.assert_close(load_quantized(tmp_path, backend="onnx")(**b).logits, student(**b).logits,
                                   atol=1e-4, rtol=0)


@pytest.mark.parametrize("act_gran,kind", [("tensor", "Int8Linear"), ("channel", "ActQuantLinear")])
@pytest.mark.parametrize("head", ["seq_cls", "token_cls"])
def test_int8_backend_logits_equal_the_students(tmp_path, act_gran, kind, head):
    quant = {**W8A8, "act": {**W8A8["act"], "granularity": act_gran}}
    student = make_student(quant, head=head, labels=3)
    export_quantized(student, tmp_path, onnx=False)
    exact = load_quantized(tmp_path, backend="int8")
    assert type(exact.roberta.encoder.layer[1].output.dense).__name__ == kind
    with torch.no_grad():
        for s in range(3):  # padded batches of several shapes, inputs beyond the calibrated ranges
            b = batch(n=3 + s, t=9 + 4 * s, seed=10 + s)
            assert torch.equal(exact(**b).logits, student(**b).logits)
    res = check_agreement(student, exact, [batch(seed=s) for s in range(3)])
    assert res["max_logit_diff"] == 0.0 and res["prediction_agreement"] == 100.0
    import sdq

    assert sdq.load_quantized is load_quantized


def test_int8_backend_mixed_schemes_and_attention_quantizers(tmp_path):
    quant = {"weight": {"bits": 3, "scheme": "kmeans", "granularity": "channel"},
             "act": {"bits": 8, "symmetric": False, "observer": "ema"},
             "overrides": {r"layer\.1\.output": {"bits": 8, "scheme": "uniform"}}}
    student = make_student(quant)
    export_quantized(student, tmp_path / "mixed", onnx=False)
    exact = load_quantized(tmp_path / "mixed", backend="int8")
    layer = exact.roberta.encoder.layer
    assert type(layer[1].output.dense).__name__ == "Int8Linear"
    assert type(layer[0].output.dense).__name__ == "ActQuantLinear"  # k-means weight: fake-quant input
    with torch.no_grad():
        assert torch.equal(exact(**batch()).logits, student(**batch()).logits)
    attn = make_student({**W8A8, "attention": {"bits": 8, "symmetric": False}})
    export_quantized(attn, tmp_path / "attn", onnx=False)
    with pytest.raises(SdqError, match="backend=onnx"):
        load_quantized(tmp_path / "attn", backend="int8")
    with pytest.raises(SdqError, match="unknown; use one of: torch, int8, onnx"):
        load_quantized(tmp_path / "mixed", backend="tensorrt")


def test_per_channel_input_qdq_and_grouped_codes_equal_a_hand_computation():
    """A Linear whose input is quantized per channel and whose weight is grouped uniform codes becomes
    per-axis QuantizeLinear/DequantizeLinear -> MatMul on the codes dequantized in the graph (int8
    initializer, no float copy): onnxruntime's output is the numpy reference, not the float product."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from sdq.export.onnx_graph import ActQuant, LinearPlan, rewrite_linears

    rng = np.random.default_rng(0)
    codes = rng.integers(-8, 8, size=(10, 2))  # (G, n): 4-bit codes of a (out 5, in 4) weight in groups of 2
    w_scale = rng.uniform(0.01, 0.2, size=(10, 1)).astype(np.float32)
    weight = (codes * w_scale).astype(np.float32).reshape(5, 4)  # (out, in), the student's (q - 0) * s
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="/lin/MatMul")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 5])],
        [numpy_helper.from_array(weight.T.copy(), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    scale, zp = np.array([0.1, 0.5, 0.05, 1.0], np.float32), np.array([128, 100, 0, 255])
    plan = LinearPlan(weight=weight, act=ActQuant(scale, zp, 0, 255), grouped=(codes, w_scale, None))
    assert rewrite_linears(model, {"lin": plan}) == {"integer": 0, "act_qdq": 1, "float": 0, "int_weight": 1,
                                                      "per_token": 0, "rotated": 0}
    inits = {t.name: t for t in model.graph.initializer}
    assert "w" not in inits and inits["lin.w_codes"].data_type == TensorProto.INT8
    x = rng.normal(scale=3.0, size=(2, 3, 4)).astype(np.float32)  # (B, T, in)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, {"x": x})
    ref = (np.clip(np.rint(x * (np.float32(1) / scale)) + zp, 0, 255) - zp) * scale @ weight.T  # as the student
    np.testing.assert_allclose(y, ref, atol=1e-5, rtol=0)
    assert not np.allclose(y, x @ weight.T, atol=1e-2)


@pytest.mark.parametrize("quant", [G32, LSQ2_G32], ids=["w4-group32", "lsq2-group32"])
def test_grouped_weights_go_to_onnx_as_codes_and_reproduce_the_student(tmp_path, quant):
    """The w4a8_g32 / w2a8_g32 layouts with per-channel 8-bit inputs: every encoder Linear's weight is 8-bit
    codes in model.onnx (no float copy of it), and onnxruntime gives the student's logits."""
    student = make_student({**quant, "act": {**W8A8["act"], "granularity": "channel"}})
    report = export_quantized(student, tmp_path, onnx=True)
    ops = report.onnx["ops"]
    assert ops["int_weight"] == ops["act_qdq"] == 12 and ops["integer"] == 0
    graph = onnx.load(str(tmp_path / "model.onnx")).graph
    floats = [t.name for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) == 2
              and t.dims[1] > 1 and not t.name.startswith(("classifier", "roberta.embeddings"))]
    assert floats == [] and sum(t.name.endswith(".w_codes") for t in graph.initializer) == 12
    b = batch()
    with torch.no_grad():
        torch.testing.assert_close(load_quantized(tmp_path, backend="onnx")(**b).logits, student(**b).logits,
                                   atol=1e-4, rtol=0)
