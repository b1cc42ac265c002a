"""eval_xglue.py / sdq.report.runner: the three modes, the gate's exit status, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from sdq.errors import SdqConfigError
from sdq.report.gate import EXIT_GATE_FAILED
from sdq.report.runner import run_eval
from sdq.report.synthetic import fake_results, write_fake_sweep, write_json

ROOT = Path(__file__).resolve().parents[1]
LANGS = ["en", "de", "sw"]


def make_cfg(**overrides):
    cfg = OmegaConf.load(ROOT / "conf" / "eval.yaml")
    cfg.pop("hydra")
    return OmegaConf.merge(cfg, OmegaConf.from_dotlist([f"{k}={v}" for k, v in overrides.items()]))


@pytest.fixture
def runs(tmp_path):
    teacher = write_json(
        tmp_path / "teacher" / "results.json", fake_results("xnli", method="fp", languages=LANGS)
    )
    bad = write_json(
        tmp_path / "bad" / "results.json", fake_results("xnli", bits=2, drop=1.0, languages=LANGS)
    )
    return teacher.parent, bad.parent


def test_compare_writes_table_heatmap_and_bars(tmp_path):
    root = write_fake_sweep(tmp_path / "multirun" / "t0", "pawsx")
    out = tmp_path / "out"
    assert run_eval(make_cfg(compare=str(root)), out) == 0
    for name in ("compare.md", "compare_pawsx.csv", "heatmap_pawsx.png", "averages_pawsx.png"):
        assert (out / name).is_file(), name
    md = (out / "compare.md").read_text()
    assert "| me5_small | sdq | b2 | 77.50 (-2.50) |" in md and "![heatmap_pawsx](heatmap_pawsx.png)" in md
    with pytest.raises(SdqConfigError, match="no xnli runs found"):
        run_eval(make_cfg(compare=str(root), task="xnli"), out)


def test_results_mode_gate(runs, tmp_path):
    teacher, bad = runs
    out = tmp_path / "out"
    status = run_eval(make_cfg(results=str(bad), reference=str(teacher), **{"gate.max_lang_drop": 1.05}), out)
    assert status == EXIT_GATE_FAILED
    gate = json.loads((out / "gate.json").read_text())[0]
    assert gate["failed_languages"] == ["sw", "de"] and not gate["passed"]
    assert "| sw | 75.80 | 77.00 | -1.20 |" in (out / "report.md").read_text()
    assert (out / "xnli_test_languages.png").is_file()
    cfg = make_cfg(
        results=str(teacher), reference=str(teacher), **{"gate.max_drop": 0, "gate.max_lang_drop": 0}
    )
    assert run_eval(cfg, tmp_path / "out2") == 0
    # no reference: the run's own FP teacher; a language subset re-averages
    assert (
        run_eval(make_cfg(results=str(bad), languages="[en]", **{"gate.max_drop": 1.0}), tmp_path / "o3") == 0
    )
    assert (
        run_eval(make_cfg(results=str(bad), languages="[sw]", **{"gate.max_drop": 1.0}), tmp_path / "o4") == 3
    )


def test_ckpt_mode_calls_evaluate_and_writes_results(runs, tmp_path, monkeypatch):
    teacher, _ = runs
    ckpt = tmp_path / "student.ckpt"
    ckpt.write_bytes(b"stub")
    (teacher / "checkpoints").mkdir()
    (teacher / "checkpoints" / "best.ckpt").write_bytes(b"stub")
    calls = []

    def fake_evaluate(ckpt, task, data_root, reference=None, languages=None, batch_size=64, limit_eval=None):
        calls.append((ckpt, task, data_root, reference, languages, batch_size, limit_eval))
        return fake_results(task, bits=4, drop=1.0, languages=languages)

    # a stand-in for the lead's sdq.evaluate (no model, no Lightning import)
    monkeypatch.setitem(sys.modules, "sdq.evaluate", types.SimpleNamespace(evaluate_checkpoint=fake_evaluate))
    cfg = make_cfg(
        ckpt=str(ckpt),
        tasks="[xnli,ner]",
        languages="[en,de]",
        reference=str(teacher),
        **{"data.root": "/data", "data.eval_batch_size": 8, "gate.max_lang_drop": 1.05},
    )
    assert run_eval(cfg, tmp_path / "out") == EXIT_GATE_FAILED  # de drops 1.1 in both tasks
    ref_ckpt = str(teacher / "checkpoints" / "best.ckpt")
    assert calls == [
        (str(ckpt), "xnli", "/data", ref_ckpt, ["en", "de"], 8, None),
        (str(ckpt), "ner", "/data", ref_ckpt, ["en", "de"], 8, None),
    ]
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["xnli"]["test"]["de"] == 77.4 and saved["ner"]["test"]["en"] == 79.0
    assert set(saved["teacher"]) == {"xnli", "ner"} and saved["metric"] == {"xnli": "acc", "ner": "f1"}
    gates = json.loads((tmp_path / "out" / "gate.json").read_text())
    assert [g["failed_languages"] for g in gates] == [["de"], ["de"]]


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({}, "exactly one of"),
        ({"ckpt": "/nope/best.ckpt", "task": "xnli"}, r"ckpt=/nope/best.ckpt does not exist"),
        ({"ckpt": "/tmp", "task": "foo"}, "task 'foo' is not an XGLUE"),
        ({"ckpt": "/tmp", "task": "pawsx", "languages": "[en,sw]"}, "languages: sw not in task pawsx"),
        ({"ckpt": "/tmp"}, "needs task="),
        ({"ckpt": "/tmp", "task": "xnli", "split": "train"}, "split=train"),
    ],
)
def test_bad_input_is_one_config_error(overrides, match, tmp_path):
    with pytest.raises(SdqConfigError, match=match):
        run_eval(make_cfg(**overrides), tmp_path)


def test_results_mode_bad_input(runs, tmp_path):
    _, bad = runs
    ckpt = tmp_path / "t.ckpt"
    ckpt.write_bytes(b"stub")
    with pytest.raises(SdqConfigError, match="is a checkpoint without results.json"):
        run_eval(make_cfg(results=str(bad), reference=str(ckpt)), tmp_path / "o")
    with pytest.raises(SdqConfigError, match="has no pos results"):
        run_eval(make_cfg(results=str(bad), task="pos"), tmp_path / "o")


def _script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "eval_xglue.py"), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )


def test_script_exit_status_and_one_line_errors(runs, tmp_path):
    teacher, bad = runs
    p = _script(
        f"results={bad}",
        f"reference={teacher}",
        "gate.max_drop=0.5",
        "gate.max_lang_drop=1.05",
        f"hydra.run.dir={tmp_path / 'g'}",
    )
    assert p.returncode == 3, p.stderr
    assert "gate FAILED on xnli test" in p.stderr and "sw (1.20), de (1.10)" in p.stderr
    p = _script("ckpt=/nope.ckpt", "task=xnli", f"hydra.run.dir={tmp_path / 'e'}")
    assert p.returncode == 2 and p.stderr.strip().splitlines() == [
        "error: ckpt=/nope.ckpt does not exist; pass a run dir or its checkpoints/best.ckpt"
    ]


def test_ckpt_per_task_mapping(tmp_path, monkeypatch):
    a, b = tmp_path / "a.ckpt", tmp_path / "b.ckpt"
    a.write_bytes(b"stub")
    b.write_bytes(b"stub")
    seen = {}

    def fake_evaluate(ckpt, task, data_root, reference=None, languages=None, batch_size=64, limit_eval=None):
        seen[task] = ckpt
        return fake_results(task, bits=8, drop=0.0)

    monkeypatch.setitem(sys.modules, "sdq.evaluate", types.SimpleNamespace(evaluate_checkpoint=fake_evaluate))
    cfg = make_cfg(ckpt=f"{{pos: {a}, ner: {b}}}", tasks="[pos,ner]", plots=False)
    assert run_eval(cfg, tmp_path / "out") == 0
    assert seen == {"pos": str(a), "ner": str(b)}
    with pytest.raises(SdqConfigError, match="ckpt has no entry for task xnli"):
        run_eval(make_cfg(ckpt=f"{{pos: {a}}}", task="xnli"), tmp_path / "out")


def test_compare_plots_layer_errors_of_quantized_runs(tmp_path):
    root = write_fake_sweep(tmp_path / "multirun" / "t0", "xnli")
    job = root / "bits=4,method=sdq" / "results.json"
    res = json.loads(job.read_text())
    errs = {"layer_carried": [0.01, 0.02, 0.04], "layer_local": [0.01, 0.01, 0.01],
            "attn_carried": [0.02, 0.03, 0.05], "attn_local": [0.02, 0.02, 0.02]}
    res["layer_errors"] = [{"epoch": 0, **{k: [2 * v for v in vs] for k, vs in errs.items()}}, {"epoch": 1, **errs}]
    write_json(job, res)
    out = tmp_path / "out"
    assert run_eval(make_cfg(compare=str(root)), out) == 0
    assert (out / "layer_errors_xnli.png").stat().st_size > 10_000
    assert "![layer_errors_xnli](layer_errors_xnli.png)" in (out / "compare.md").read_text()


def test_layer_error_panels_keep_unlabeled_runs_apart(tmp_path):
    from sdq.report.plots import layer_error_panels

    runs = []
    for i, unlabeled in enumerate([None, {"path": "u/{lang}.tsv"}]):
        res = fake_results("xnli", method="sdq", bits=4, drop=1.0)
        res["config"] = {**res.get("config", {}), "unlabeled": unlabeled}
        res["layer_errors"] = [{"epoch": 0, "layer_carried": [0.1 * (i + 1)]}]
        runs.append((tmp_path / f"r{i}", res))
    panels = layer_error_panels(runs, "xnli")
    assert len(panels) == 1  # one bit width: both runs in the same panel
    (curves,) = panels.values()
    assert {m: c["layer_carried"] for m, c in curves.items()} == {"sdq": [0.1], "sdq+unlabeled": [0.2]}


@pytest.fixture(scope="module")
def xnli_run(tmp_path_factory):
    """A tiny FP XNLI checkpoint (fixture data: 12 dev/test examples per language) trained with limit_eval=3,
    selected on English dev."""
    import torch
    from hydra import compose, initialize_config_dir

    from sdq.config import plain_config, resolve_config
    from sdq.data.synthetic import write_fixture
    from sdq.lit.restore import build_from_config

    tmp = tmp_path_factory.mktemp("xnli_run")
    root = write_fixture(tmp / "data", tasks=["xnli"], n=12)
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["model=tiny", "task=xnli", "method=fp", f"data.root={root}",
                                                       "data.limit_eval=3", "data.eval_batch_size=4",
                                                       "data.val_languages=[en]"])
    cfg = resolve_config(cfg)
    torch.manual_seed(0)
    student = build_from_config(cfg, quantize=False).eval()
    (tmp / "run" / "checkpoints").mkdir(parents=True)
    torch.save({"state_dict": {f"student.{k}": v for k, v in student.state_dict().items()},
                "sdq": {"config": plain_config(cfg)}}, tmp / "run" / "checkpoints" / "best.ckpt")
    return tmp / "run", root


@pytest.mark.parametrize(("limit", "expected"), [("5", 5), ("null", 12)])
def test_ckpt_mode_takes_its_own_eval_limit(xnli_run, tmp_path, limit, expected):
    """data.limit_eval of eval_xglue, not the training run's (3): N examples per language, null = all; the
    console says how many were evaluated, results.json keeps the counts."""
    from rich.console import Console

    run, root = xnli_run
    console = Console(record=True, width=200)
    cfg = make_cfg(ckpt=str(run), task="xnli", plots=False, **{"data.root": str(root), "data.limit_eval": limit})
    assert run_eval(cfg, tmp_path / "out", console) == 0
    counts = json.loads((tmp_path / "out" / "results.json").read_text())["examples"]["xnli"]
    langs = sorted(counts["test"])
    assert len(langs) > 1 and sorted(counts["dev"]) == langs  # dev in every language, not the run's [en]
    assert langs and all(counts[split][lang] == expected for split in ("dev", "test") for lang in langs), counts
    each = ", ".join(f"{lang} {expected}" for lang in counts["test"])
    assert f"xnli examples evaluated per language: dev {each}; test {each}" in console.export_text()


@pytest.mark.parametrize("limit", ["0", "-3", "abc", "true"])
def test_bad_eval_limit_is_one_config_error(tmp_path, limit):
    ckpt = tmp_path / "s.ckpt"
    ckpt.write_bytes(b"stub")
    with pytest.raises(SdqConfigError, match=r"data.limit_eval=.* must be a positive integer"):
        run_eval(make_cfg(ckpt=str(ckpt), task="xnli", **{"data.limit_eval": limit}), tmp_path / "o")


def test_script_limit_override_and_unknown_key(tmp_path):
    p = _script("ckpt=/nope.ckpt", "task=xnli", "data.limit_eval=null", f"hydra.run.dir={tmp_path / 'e'}")
    assert p.returncode == 2 and p.stderr.startswith("error: ckpt=/nope.ckpt does not exist"), p.stderr
    p = _script("ckpt=/nope.ckpt", "data.limit_evl=5", f"hydra.run.dir={tmp_path / 'e'}")
    assert p.returncode == 2 and p.stderr.strip().splitlines() == [
        ("error: data.limit_evl is not a config key (did you mean data.limit_eval? add a new key with "
         "+data.limit_evl=5)")
    ]


def test_ckpt_mode_carries_layer_errors_against_its_reference(xnli_run, tmp_path):
    """ckpt= with a reference: results.json holds the per-layer error carried against it, as a training run's
    does: exactly 0 for the reference itself, > 0 from the first perturbed layer on; none without a teacher."""
    import torch

    from sdq.evaluate import evaluate_checkpoint

    run, root = xnli_run
    best = run / "checkpoints" / "best.ckpt"
    same = evaluate_checkpoint(str(run), "xnli", str(root), reference=str(run), limit_eval=3)
    (errors,) = same["layer_errors"]
    n_layers = len(errors["layer_carried"])
    assert n_layers >= 2 and errors["layer_carried"] == [0.0] * n_layers, errors

    state = torch.load(best, weights_only=False)
    key = next(k for k in state["state_dict"] if ".layer.1." in k and k.endswith("output.dense.weight"))
    state["state_dict"][key] = state["state_dict"][key] + 0.05  # perturb layer 1 only
    (tmp_path / "p" / "checkpoints").mkdir(parents=True)
    torch.save(state, tmp_path / "p" / "checkpoints" / "best.ckpt")
    carried = evaluate_checkpoint(str(tmp_path / "p"), "xnli", str(root), reference=str(run),
                                  limit_eval=3)["layer_errors"][-1]["layer_carried"]
    assert carried[0] == 0.0 and all(v > 0 for v in carried[1:]), carried

    assert "layer_errors" not in evaluate_checkpoint(str(run), "xnli", str(root), limit_eval=3)


def test_layer_errors_only_between_models_of_the_same_depth():
    """ckpt= against a reference of another depth (or a model without attention blocks) reports fidelity
    without the per-layer error instead of failing at the end of the dev pass."""
    import torch
    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification

    from sdq.evaluate import same_depth

    def model(layers):
        return XLMRobertaForSequenceClassification(XLMRobertaConfig(
            vocab_size=50, hidden_size=8, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=16))

    two = model(2)
    assert same_depth(two, model(2)) and not same_depth(two, model(1))
    assert not same_depth(two, torch.nn.Linear(2, 2))
