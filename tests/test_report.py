"""sdq.report: results.json reading, per-language rows, comparison table and regression gate."""

from __future__ import annotations

import csv
import json
import math

import pytest

from sdq.errors import SdqConfigError, SdqDataError
from sdq.report import build_comparison, check_gate, find_results, language_rows, load_results
from sdq.report.gate import check_limits
from sdq.report.io import bits_label, resolve_reference
from sdq.report.run_table import rows_markdown
from sdq.report.synthetic import fake_results, write_fake_sweep, write_json

LANGS = ["en", "de", "sw"]


def approx(x):
    return pytest.approx(x, abs=1e-9)


def test_language_rows_against_hand_computed_values():
    # teacher 80 / 78.5 / 77; student loses 1.0 / 1.1 / 1.2 points
    res = fake_results("xnli", drop=1.0, languages=LANGS)
    rows = language_rows(res, "xnli", "test")
    assert [r.lang for r in rows] == ["en", "de", "sw", "avg"]
    assert [r.value for r in rows[:3]] == [79.0, 77.4, 75.8]
    assert [r.ref for r in rows[:3]] == [80.0, 78.5, 77.0]
    assert [r.delta for r in rows] == [approx(-1.0), approx(-1.1), approx(-1.2), approx(-1.1)]
    assert [r.agree for r in rows[:3]] == [98.0, 97.8, 97.6]
    assert rows[-1].value == approx(77.4) and rows[-1].ref == approx(78.5)
    md = rows_markdown(rows, "acc", "FP teacher")
    assert "| sw | 75.80 | 77.00 | -1.20 | 97.60 | 0.0120 |" in md
    assert "| **avg** | **77.40** | **78.50** | **-1.10** |" in md


def test_explicit_reference_wins_and_averages_use_common_languages():
    res = fake_results("xnli", drop=1.0, languages=LANGS)
    ref = fake_results("xnli", method="fp", top=81.0, languages=["en", "de"])
    rows = language_rows(res, "xnli", "test", reference=ref)
    assert [r.ref for r in rows[:2]] == [81.0, 79.5]
    assert math.isnan(rows[2].ref)  # sw not in the reference
    assert rows[-1].value == approx((79.0 + 77.4) / 2) and rows[-1].ref == approx((81.0 + 79.5) / 2)
    with pytest.raises(SdqConfigError, match="reference has no pos test results"):
        language_rows(fake_results("pos"), "pos", "test", reference=ref)


def test_gate_fails_on_bad_model_and_names_languages():
    res = fake_results("xnli", drop=1.0, languages=LANGS)
    g = check_gate(language_rows(res, "xnli", "test"), "xnli", "test", max_drop=0.5, max_lang_drop=1.05)
    assert not g.passed and g.avg_failed
    assert g.failed_languages == ["sw", "de"]  # worst first; en (1.0) within the limit
    assert g.lang_drops == {"en": 1.0, "de": 1.1, "sw": 1.2}
    assert "sw (1.20), de (1.10)" in g.message and "avg drop 1.10 > 0.5" in g.message
    # a drop equal to the limit passes
    g = check_gate(language_rows(res, "xnli", "test"), "xnli", "test", max_lang_drop=1.2)
    assert g.passed and g.avg_drop == approx(1.1)


def test_gate_passes_on_the_teacher_itself_and_validates_input():
    teacher = fake_results("xnli", method="fp", languages=LANGS)
    g = check_gate(language_rows(teacher, "xnli", "test", reference=teacher), "xnli", "test", 0.0, 0.0)
    assert g.passed and g.avg_drop == 0.0 and set(g.lang_drops.values()) == {0.0}
    with pytest.raises(SdqConfigError, match="no reference metrics"):
        check_gate(language_rows(teacher, "xnli", "test"), "xnli", "test", 0.5, None)
    with pytest.raises(SdqConfigError, match="gate.max_lang_drop"):
        check_limits(0.5, -1)
    with pytest.raises(SdqConfigError, match="gate.max_drop"):
        check_limits("lots", None)


def test_load_results_errors(tmp_path):
    with pytest.raises(SdqDataError, match="no results found"):
        load_results(tmp_path)
    (tmp_path / "results.json").write_text("{not json")
    with pytest.raises(SdqDataError, match="not valid JSON"):
        load_results(tmp_path)
    (tmp_path / "results.json").write_text(json.dumps({"metric": "acc"}))
    with pytest.raises(SdqDataError, match="no per-language task results"):
        load_results(tmp_path / "results.json")
    with pytest.raises(SdqConfigError, match="does not exist"):
        find_results([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SdqDataError, match="no results.json"):
        find_results(tmp_path / "empty")


def test_bits_labels():
    assert bits_label({"method": "sdq", "bits": 4}) == "b4"
    assert bits_label({"method": "ptq", "bits": "w4a8"}) == "w4a8"
    u4, u8 = {"bits": 4, "scheme": "uniform"}, {"bits": 8}
    assert bits_label({"method": "sdq", "bits": 4, "config": {"quant": {"weight": u4, "act": u8, "embedding": u4}}}) \
        == "w4a8"  # from the resolved quant config, not the bits= shortcut
    assert bits_label({"method": "ptq", "config": {"quant": {"weight": {"bits": 4, "scheme": "kmeans"},
                                                             "act": None, "embedding": u8}}}) == "w4-e8-kmeans"
    assert bits_label({"method": "ptq", "config": {"quant": {"weight": u8, "act": u8, "embedding": u8,
                                                             "attention": u8}}}) == "w8a8-attn"
    assert bits_label({"method": "sdq", "config": {"quant": {"name": "mixed_2p5", "weight": u4, "act": None,
                                                             "token_bits": {"rest_bits": 1}}}}) == "mixed_2p5"
    assert bits_label({"method": "fp", "bits": "fp32"}) == "fp32"
    assert bits_label({"method": "fp_continued", "bits": 8}) == "fp32"
    assert bits_label({"method": "qat", "quant": "kmeans4"}) == "kmeans4"


def test_resolve_reference(tmp_path):
    assert resolve_reference(None) is None
    run = tmp_path / "run"
    write_json(run / "results.json", fake_results("xnli", method="fp"))
    ref = resolve_reference(run)
    assert ref.results["method"] == "fp" and ref.ckpt is None
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "best.ckpt").write_bytes(b"x")
    assert resolve_reference(run).ckpt == str(run / "checkpoints" / "best.ckpt")
    assert resolve_reference(run / "results.json").ckpt is None
    assert resolve_reference(run / "checkpoints" / "best.ckpt").results is None
    (tmp_path / "bare").mkdir()
    with pytest.raises(SdqConfigError, match="neither results.json nor"):
        resolve_reference(tmp_path / "bare")
    with pytest.raises(SdqConfigError, match="does not exist"):
        resolve_reference(tmp_path / "nope")


def test_comparison_of_a_sweep(tmp_path):
    root = write_fake_sweep(tmp_path / "multirun" / "t0", "xnli")
    table = build_comparison(find_results(root))["xnli"]
    labels = [(r.method, r.bits) for r in table.rows]
    assert labels[:3] == [("fp", "fp32"), ("fp_continued", "fp32"), ("ptq", "b8")]
    assert labels[-1] == ("sdq", "b2") and len(labels) == 2 + 4 * 3
    assert len(table.rows[1].sources) == 3  # fp_continued bits=8,4,2 are one FP row
    assert table.rows[0].sources[0].endswith("teacher/results.json")
    assert table.languages[:3] == ["en", "ar", "bg"] and len(table.languages) == 15
    ptq4 = next(r for r in table.rows if (r.method, r.bits) == ("ptq", "b4"))
    assert ptq4.delta("en") == approx(-3.0) and ptq4.delta("sw") == approx(-3.0 * 1.9)
    assert ptq4.agree["en"] == 94.0
    md = table.markdown()
    assert "| me5_small | ptq | b4 | 77.00 (-3.00) |" in md and "agree % avg" in md
    table.write_csv(tmp_path / "t.csv")
    with open(tmp_path / "t.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert rows[0]["method"] == "fp" and float(rows[0]["en"]) == 80.0
    assert float(next(r for r in rows if r["method"] == "sdq" and r["bits"] == "b2")["delta_en"]) == -2.5


def test_comparison_keeps_unlabeled_runs_apart_from_their_control(tmp_path):
    control = fake_results("xnli", method="sdq", bits=8, drop=1.0)
    unlabeled = fake_results("xnli", method="sdq", bits=8, drop=0.5)
    unlabeled["config"] = {**unlabeled.get("config", {}), "unlabeled": {"path": "u/{lang}.tsv"}}
    write_json(tmp_path / "c" / "results.json", control)
    write_json(tmp_path / "u" / "results.json", unlabeled)
    rows = build_comparison(find_results([tmp_path]))["xnli"].rows
    assert [r.method for r in rows] == ["sdq", "sdq+unlabeled"]
    assert rows[0].values["en"] == approx(79.0) and rows[1].values["en"] == approx(79.5)


def test_comparison_fp_fallback_explicit_fp_and_seed_average(tmp_path):
    write_json(
        tmp_path / "a" / "teacher" / "results.json",
        {**fake_results("pawsx", method="fp"), "stage": "teacher"},
    )
    write_json(tmp_path / "fp" / "results.json", fake_results("pawsx", method="fp", top=81.0))
    write_json(
        tmp_path / "a" / "results.json", fake_results("pawsx", method="qat", bits=4, drop=1.0, teacher=False)
    )
    write_json(tmp_path / "s1" / "results.json", fake_results("pawsx", method="sdq", bits=4, drop=1.0))
    write_json(tmp_path / "s2" / "results.json", fake_results("pawsx", method="sdq", bits=4, drop=2.0))
    table = build_comparison(find_results([tmp_path]))["pawsx"]
    fp, qat, sdq = table.rows
    assert fp.values["en"] == 81.0 and fp.sources == [str(tmp_path / "fp" / "results.json")]
    assert qat.fp["en"] == 81.0 and qat.delta("en") == approx(79.0 - 81.0)  # no own teacher: the fp row
    assert sdq.values["en"] == approx(78.5) and sdq.delta("en") == approx(
        -1.5
    )  # mean of 2 seeds, own teacher
