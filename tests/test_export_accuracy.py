"""Per-language evaluation of an export (sdq.export.accuracy, ``python -m sdq.export check=test``) against
hand-written references on a tiny W8A8 XLM-R; corrupt export dirs with a consistent manifest."""

import json
from pathlib import Path

import pytest
import torch

from sdq.errors import SdqError
from sdq.export import export_quantized, load_quantized
from sdq.export.accuracy import evaluate_languages, format_table, task_batches, verdict
from sdq.export.peers import torch_dynamic_int8
from sdq.export.writer import META_FILE, ONNX_FILE, WEIGHTS_FILE, write_manifest
from sdq.quant import QuantConfig, prepare, set_phase

CONF = Path(__file__).resolve().parents[1] / "conf"
W8A8 = {"weight": {"bits": 8, "granularity": "channel"},
        "act": {"bits": 8, "symmetric": False, "granularity": "tensor", "observer": "ema"},
        "embedding": {"bits": 8, "granularity": "row"}}


def tiny_fp() -> torch.nn.Module:
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification

    cfg = XLMRobertaConfig(vocab_size=1000, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=66, num_labels=3)
    torch.manual_seed(0)
    return XLMRobertaForSequenceClassification(cfg).eval()


def labelled(seed: int, n: int = 6, t: int = 10) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 1000, (n, t), generator=g)
    mask = torch.ones_like(ids)
    mask[0, t // 2:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.randint(0, 3, (n,), generator=g)}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    fp = tiny_fp()
    student = tiny_fp()
    prepare(student, QuantConfig.from_dict(W8A8))
    set_phase(student, "calibrate")
    with torch.no_grad():
        student(**{k: v for k, v in labelled(99, 8, 16).items() if k != "labels"})
    set_phase(student, "frozen")
    out = tmp_path_factory.mktemp("w8a8")
    export_quantized(student, out)
    return fp, student, out


def test_per_language_figures_match_a_hand_computation(exported):
    fp, student, out = exported
    models = {"student": student, "ours": load_quantized(out, backend="onnx"), "torch_dyn": torch_dynamic_int8(fp),
              "fp": fp}
    batches = {"en": [labelled(0), labelled(1)], "de": [labelled(2, n=4)]}
    res = evaluate_languages(models, batches, reference="student")
    for lang, bs in batches.items():
        with torch.no_grad():
            logits = {k: torch.cat([m(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits.float()
                                    for b in bs]) for k, m in models.items()}
        labels = torch.cat([b["labels"] for b in bs])
        ref_pred = logits["student"].argmax(-1)
        for k, lg in logits.items():
            acc = 100.0 * (lg.argmax(-1) == labels).sum().item() / len(labels)
            r = res[k][lang]
            assert r["n"] == len(labels)
            assert r["metric"] == pytest.approx(acc, abs=1e-9)
            assert r["agree"] == pytest.approx(100.0 * (lg.argmax(-1) == ref_pred).sum().item() / len(labels), abs=1e-9)
            assert r["metric_diff"] == pytest.approx(acc - res["student"][lang]["metric"], abs=1e-9)
            assert r["max_logit_diff"] == (lg - logits["student"]).abs().max().item()
    assert res["student"]["en"]["max_logit_diff"] == 0.0 and res["student"]["de"]["agree"] == 100.0
    assert res["ours"]["en"]["max_logit_diff"] < 1e-4  # int8 ORT reproduces the fake-quantized student
    for k in models:
        assert res[k]["avg"]["metric"] == pytest.approx((res[k]["en"]["metric"] + res[k]["de"]["metric"]) / 2)
        assert res[k]["avg"]["max_logit_diff"] == max(res[k]["en"]["max_logit_diff"], res[k]["de"]["max_logit_diff"])
    table = format_table(res, reference="student")
    assert all(lang in table for lang in ("en", "de", "avg")) and "torch_dyn" in table


def test_verdict():
    def fake(accs):
        return {**{lang: {"metric": a} for lang, a in accs.items()}, "avg": {"metric": sum(accs.values()) / 2}}

    res = {"student": fake({"en": 70.0, "de": 60.0}), "ours": fake({"en": 70.1, "de": 60.0}),
           "peer": fake({"en": 69.0, "de": 61.0})}
    v = verdict(res, ours="ours", reference="student", peers=["peer"], tol=0.1)
    assert v["ok"] and v["within_tol"] and v["worst_lang"] == "en" and v["beats"] == {"peer": True}
    res["ours"]["de"]["metric"] = 59.8
    v = verdict(res, ours="ours", reference="student", peers=["peer"], tol=0.1)
    assert not v["ok"] and v["over_tol"] == ["de"] and v["worst_diff"] == pytest.approx(-0.2)
    res["peer"]["avg"]["metric"] = 99.0
    assert verdict(res, "ours", "student", ["peer"], tol=1.0)["beats"] == {"peer": False}


@pytest.fixture(scope="module")
def xnli_ckpt(tmp_path_factory):
    """A PTQ-style sdq checkpoint (full composed config) of a tiny W8A8-int8 XNLI student, fixture data."""
    from hydra import compose, initialize_config_dir

    from sdq.config import plain_config, resolve_config
    from sdq.data.synthetic import write_fixture
    from sdq.lit.restore import build_from_config

    tmp = tmp_path_factory.mktemp("xnli")
    root = write_fixture(tmp / "data", tasks=["xnli"], n=12)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["model=tiny", "task=xnli", "method=ptq", "quant=w8a8_int8",
                                                       f"data.root={root}", "data.eval_batch_size=5"])
    cfg = resolve_config(cfg)
    torch.manual_seed(0)
    student = build_from_config(cfg, quantize=True).eval()
    set_phase(student, "calibrate")
    with torch.no_grad():
        student(**{k: v for k, v in labelled(7, 8, 16).items() if k != "labels"})
    set_phase(student, "frozen")
    ckpt = tmp / "last.ckpt"
    torch.save({"state_dict": {f"student.{k}": v for k, v in student.state_dict().items()},
                "sdq": {"config": plain_config(cfg)}}, ckpt)
    return ckpt, root, student


def test_task_batches_are_every_test_example_of_every_language(xnli_ckpt):
    from sdq.data.tasks import get_task
    from sdq.data.xglue import read_split

    ckpt, root, _ = xnli_ckpt
    batches = task_batches(ckpt, "test")
    assert list(batches) == ["en", "ar"]  # the fixture's two XNLI languages
    for lang, bs in batches.items():
        rows = read_split(root, get_task("xnli"), lang, "test")
        assert [len(b["labels"]) for b in bs] == [5, 5, 2]  # eval_batch_size=5, 12 examples
        got = sorted(int(y) for b in bs for y in b["labels"])
        assert got == sorted(int(r["label"]) for r in rows)
        assert set(bs[0]) >= {"input_ids", "attention_mask", "labels"}
    assert [len(b["labels"]) for b in task_batches(ckpt, "test", languages=["ar"], limit_batches=1)["ar"]] == [5]
    with pytest.raises(Exception, match="split="):
        task_batches(ckpt, "train")


def test_cli_check_test_reports_every_language(xnli_ckpt, tmp_path, capsys):
    from sdq.export.__main__ import main

    ckpt, _, student = xnli_ckpt
    res = main([f"ckpt={ckpt}", f"out={tmp_path / 'export'}", "check=test"])
    ag = res["agreement"]
    assert ag["split"] == "test" and ag["backend"] == "int8" and ag["verdict"]["ok"]
    assert set(ag["per_language"]) == {"en", "ar", "avg"}
    assert all(ag["per_language"][lang]["n"] == 12 for lang in ("en", "ar"))
    ref = evaluate_languages({"student": student, "ours": load_quantized(tmp_path / "export", backend="int8")},
                             task_batches(ckpt, "test"))
    for lang in ("en", "ar"):
        assert ag["per_language"][lang]["metric"] == ref["ours"][lang]["metric"]
        assert ag["student"][lang]["metric"] == ref["student"][lang]["metric"]
    assert "vs student" in capsys.readouterr().out
    saved = json.loads((tmp_path / "export" / "export_report.json").read_text())
    assert saved["agreement"]["verdict"]["ok"]


def _copy(src, dst):
    dst.mkdir()
    for f in src.iterdir():
        if f.is_file():
            (dst / f.name).write_bytes(f.read_bytes())
    return dst


@pytest.mark.parametrize("damage", ["truncated_onnx", "corrupt_weights_resigned", "corrupt_meta_resigned",
                                    "corrupt_onnx_resigned"])
def test_damaged_export_is_one_sdq_error(exported, tmp_path, damage):
    """Truncation is caught by the manifest; a damaged file under a re-written (consistent) manifest
    still gives one SdqError, never a raw parser traceback."""
    _, _, out = exported
    d = _copy(out, tmp_path / "copy")
    name = {"truncated_onnx": ONNX_FILE, "corrupt_weights_resigned": WEIGHTS_FILE,
            "corrupt_meta_resigned": META_FILE, "corrupt_onnx_resigned": ONNX_FILE}[damage]
    data = (d / name).read_bytes()
    (d / name).write_bytes(data[: len(data) // 2] if damage == "truncated_onnx" else b"\x00garbage" + data[:64])
    if damage.endswith("resigned"):
        write_manifest(d)
    backends = ("onnx",) if "onnx" in damage else ("torch", "onnx")
    for backend in backends:
        with pytest.raises(SdqError) as exc:
            load_quantized(d, backend=backend)
        assert "\n" not in str(exc.value) and str(d) in str(exc.value)


def test_format_table_cells_never_touch():
    """Widest cells side by side stay apart: each row splits into lang + 5 fields per model."""
    cell = {"n": 501, "metric": 41.72, "agree": 100.0, "metric_diff": 0.2, "max_logit_diff": 0.00662}
    res = {name: {"en": dict(cell), "avg": dict(cell)} for name in ("student", "ours_int8_torch", "ours_int8_onnx_s8")}
    rows = format_table(res, reference="student").splitlines()
    body = rows[rows.index(next(r for r in rows if r.startswith("vs student"))) + 2:]
    assert len(body) == 2 and all(r.split() == [r.split()[0]] + ["100.0", "/", "+0.20", "/", "0.00662"] * 2
                                  for r in body)
