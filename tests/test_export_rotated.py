"""Export of students whose Linear inputs are rotated (quant.act.rotate) and/or quantized per token: packed in
the rotated basis, the `int8` backend equal to the student, the plain model equal to strip(), and the ONNX
graph's own rotation and per-token quantization against the student's."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from test_export import batch, make_student

from sdq.errors import SdqError
from sdq.export import export_quantized, load_quantized
from sdq.export.collect import collect
from sdq.export.loader import read_export
from sdq.quant import QuantLinear, strip

WEIGHT = {"bits": 8, "granularity": "group", "group_size": 32}
EMB = {"bits": 8, "granularity": "row"}
TOKEN_ROT = {"bits": 8, "symmetric": False, "granularity": "token", "rotate": True}  # quant=w8a8_rot's input
ACTS = {"token-rotated": TOKEN_ROT, "token-rotated-sym": {**TOKEN_ROT, "symmetric": True},
        "token": {**TOKEN_ROT, "rotate": False},
        "tensor-rotated": {"bits": 8, "symmetric": False, "granularity": "tensor", "rotate": True}}


def student_of(act: dict) -> torch.nn.Module:
    return make_student({"weight": WEIGHT, "act": act, "embedding": EMB})


def without_act_quant(student: torch.nn.Module) -> torch.nn.Module:
    """The student with its input quantizers off (rotation kept): what an export that drops them computes."""
    s = copy.deepcopy(student)
    for m in s.modules():
        if isinstance(m, QuantLinear) and m.act_quantizer is not None:
            m.act_quantizer.set_enabled(False)
    return s


@pytest.mark.parametrize("act", ACTS.values(), ids=ACTS.keys())
def test_export_of_rotated_and_per_token_inputs_runs_the_students_arithmetic(tmp_path, act):
    student = student_of(act)
    report = export_quantized(student, tmp_path, onnx=True)
    meta, _ = read_export(tmp_path)
    assert meta["version"] == 3  # a reader of v2 refuses it instead of loading rotated codes as plain ones
    assert json.loads((tmp_path / "manifest.json").read_text())["version"] == 3  # the manifest agrees
    a = meta["acts"]["roberta.encoder.layer.0.attention.self.query"]
    assert a["granularity"] == act["granularity"] and a["rotate"] == act["rotate"]
    assert ("scale" in a) == (act["granularity"] != "token")  # per-token ranges are taken at run time
    packed = meta["tensors"]["roberta.encoder.layer.1.output.dense.weight"]
    assert packed.get("rotated", False) == act["rotate"]
    b = batch(4, 12, seed=3)
    with torch.no_grad():
        ref = student(**b).logits
        assert torch.equal(load_quantized(tmp_path, backend="int8")(**b).logits, ref)  # bit for bit
        plain = load_quantized(tmp_path)
        want = strip(copy.deepcopy(student)).state_dict()
        assert all(torch.equal(v, want[k]) for k, v in plain.state_dict().items())  # rotated back as strip()
        ort = torch.as_tensor(load_quantized(tmp_path, backend="onnx")(**b).logits)
        dropped = (without_act_quant(student)(**b).logits - ref).abs().max()
    ops = report.onnx["ops"]
    assert ops["per_token"] == (12 if act["granularity"] == "token" else 0)
    assert ops["rotated"] == (12 if act["rotate"] else 0)
    assert dropped > 0
    assert (ort - ref).abs().max() <= 0.01 * dropped  # the graph quantizes the inputs as the student does


def test_onnx_rotates_and_quantizes_a_shared_input_once(tmp_path):
    import onnx

    export_quantized(student_of(TOKEN_ROT), tmp_path, onnx=True)
    graph = onnx.load(str(tmp_path / "model.onnx")).graph
    rotations = [n for n in graph.node if n.op_type == "Mul" and n.name.endswith("/Mul_norm")]
    # per layer: Q/K/V's shared input, the attention output's, the FFN's two: 4 rotations for 6 Linears
    assert len(rotations) == 2 * 4
    assert sum(n.op_type == "ReduceMin" for n in graph.node) == 2 * 4  # per-token ranges: once per input too
    assert len({t.name for t in graph.initializer if t.name.endswith(".signs")}) == 2  # widths 32 and 64


def test_rotated_input_with_fp_weight_is_refused():
    student = make_student({"weight": None, "act": TOKEN_ROT, "embedding": EMB})
    with pytest.raises(SdqError, match="rotates its input but keeps its weight FP"):
        collect(student)


def test_static_inputs_still_export_as_version_2(tmp_path):
    static = {"bits": 8, "symmetric": False, "granularity": "tensor", "rotate": False}
    export_quantized(student_of(static), tmp_path, onnx=False)
    assert read_export(tmp_path)[0]["version"] == 2
    assert json.loads((tmp_path / "manifest.json").read_text())["version"] == 2  # the manifest agrees


def test_rotated_weights_with_fp_inputs_export_as_version_3_and_run_rotated(tmp_path):
    student = without_act_quant(student_of(TOKEN_ROT))  # rotated codes, no input quantizer to describe them
    export_quantized(student, tmp_path, onnx=True)
    meta, _ = read_export(tmp_path)
    assert meta["acts"] == {} and meta["version"] == 3  # a v2 reader would load the rotated codes as plain ones
    b = batch(4, 12, seed=3)
    with torch.no_grad():
        ref = student(**b).logits
        assert torch.equal(load_quantized(tmp_path, backend="int8")(**b).logits, ref)  # rotated, as the student
        ort = torch.as_tensor(load_quantized(tmp_path, backend="onnx")(**b).logits)
    torch.testing.assert_close(ort, ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("dense_max", [256, 4], ids=["H_p-dense", "H_p-split"])
@pytest.mark.parametrize("n", [16, 48, 384])  # m = 1 and m = 12 (Paley's factor across the blocks)
def test_onnx_rotation_nodes_compute_rotate(n, dense_max, monkeypatch):
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from sdq.export.onnx_dynamic import SharedInputs
    from sdq.quant import rotation

    monkeypatch.setattr(rotation, "DENSE_MAX", dense_max)
    inits: list = []
    nodes, y = SharedInputs(inits).rotated("x", n)
    graph = helper.make_graph(nodes, "rot", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, n])],
                              [helper.make_tensor_value_info(y, TensorProto.FLOAT, None)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = torch.randn(2, 3, n)
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(got), rotation.rotate(x), rtol=0, atol=1e-5)


def test_rotated_non_uniform_weights_run_in_the_rotated_basis(tmp_path):
    kmeans = {"bits": 4, "scheme": "kmeans", "granularity": "channel"}  # no 8-bit codes: a float initializer
    student = make_student({"weight": kmeans, "act": TOKEN_ROT, "embedding": EMB})
    export_quantized(student, tmp_path, onnx=True)
    b = batch(4, 12, seed=3)
    with torch.no_grad():
        ref = student(**b).logits
        assert torch.equal(load_quantized(tmp_path, backend="int8")(**b).logits, ref)
        ort = torch.as_tensor(load_quantized(tmp_path, backend="onnx")(**b).logits)
        dropped = (without_act_quant(student)(**b).logits - ref).abs().max()
    assert (ort - ref).abs().max() <= 0.01 * dropped
