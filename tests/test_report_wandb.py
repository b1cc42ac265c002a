"""sdq.report.wandb_log: summary metrics, offline run dir with the per-language table, open-run logging."""

from __future__ import annotations

import json

import pytest

from sdq.report.synthetic import fake_results
from sdq.report.wandb_log import log_results, summary_metrics, wandb_mode

LANGS = ["en", "de", "sw"]


def test_summary_metrics_exact():
    s = summary_metrics(fake_results("xnli", drop=1.0, languages=LANGS))
    assert s["xnli/test/en"] == 79.0 and s["xnli/test/sw"] == 75.8
    assert s["xnli/test/avg"] == pytest.approx(77.4, abs=1e-9)
    assert s["xnli/test/worst_lang"] == "sw" and s["xnli/test/worst_value"] == 75.8
    assert s["xnli/test/drop_vs_fp"] == pytest.approx(1.1, abs=1e-9)
    assert s["xnli/test/worst_drop_lang"] == "sw" and s["xnli/test/worst_drop"] == pytest.approx(
        1.2, abs=1e-9
    )
    assert s["xnli/test/agree_avg"] == pytest.approx(97.8, abs=1e-9) and "xnli/dev/avg" in s
    assert "xnli/test/drop_vs_fp" not in summary_metrics(fake_results("xnli", method="fp", languages=LANGS))


def test_wandb_mode(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no_netrc"))  # not logged in
    assert wandb_mode("auto") == "offline" and wandb_mode(None) == "offline"
    assert wandb_mode("disabled") == "disabled"
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wandb_mode(None) == "offline"


class FakeRun:
    """The bits of ``wandb.Run`` that log_results touches on a run it did not open."""

    def __init__(self):
        self.logged, self.summary, self.finished = [], {}, False
        self.config = type(
            "Cfg", (), {"update": lambda _self, d, allow_val_change=False: self.tags.update(d)}
        )()
        self.tags = {}

    def log(self, payload):
        self.logged.append(payload)

    def finish(self):
        self.finished = True


def test_log_into_an_open_run():
    run = FakeRun()
    res = fake_results("ner", bits=4, drop=1.0)
    res["layer_errors"] = [{"epoch": 0, "carried": [0.1, 0.2], "local": [0.05, 0.07]}]
    log_results(res, run=run)
    assert (
        not run.finished
        and run.tags["bits"] == 4
        and run.tags["bits_label"] == "b4"
        and run.tags["task"] == "ner"
    )
    payload = run.logged[0]
    table = payload["per_language"]
    assert table.columns[:5] == ["task", "split", "lang", "metric", "value"]
    assert table.data[0] == ["ner", "test", "en", "f1", 79.0, 80.0, -1.0, 98.0, 0.01]
    assert {"charts/ner_test_f1", "charts/ner_test_delta_vs_fp", "diag/layer_errors"} <= set(payload)
    assert payload["diag/layer_errors"].data[1] == [0, "carried", 1, 0.2]
    assert run.summary["ner/test/worst_lang"] == "nl"


def test_offline_run_dir_holds_the_language_table(tmp_path, monkeypatch):
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    monkeypatch.setenv("WANDB_SILENT", "true")
    log_results(fake_results("xnli", bits=4, drop=1.0, languages=LANGS), dir=tmp_path / "run", mode="offline")
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("run-*.wandb"))
    files = list(runs[0].glob("files/media/table/per_language_*.table.json"))
    assert len(files) == 1
    table = json.loads(files[0].read_text())
    assert [row[2] for row in table["data"]] == ["en", "de", "sw", "en", "de", "sw"]  # test then dev
    assert table["data"][2][4:7] == [75.8, 77.0, -1.2]


def test_offline_compare_run_holds_numeric_per_language_table(tmp_path, monkeypatch):
    from sdq.report.compare import build_comparison
    from sdq.report.wandb_log import log_comparison

    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    monkeypatch.setenv("WANDB_SILENT", "true")
    runs = [(tmp_path / "fp", fake_results("xnli", method="fp", languages=LANGS)),
            (tmp_path / "sdq", fake_results("xnli", bits=4, drop=1.0, languages=LANGS))]
    log_comparison(build_comparison(runs), tmp_path / "cmp", mode="offline")
    (run,) = list((tmp_path / "cmp" / "wandb").glob("offline-run-*"))
    (path,) = list(run.glob("files/media/table/compare/xnli_per_language_*.table.json"))
    table = json.loads(path.read_text())
    assert table["columns"] == ["model", "method", "bits", "language", "acc", "delta_vs_fp", "agree"]
    rows = {(r[1], r[3]): r for r in table["data"]}
    assert len(table["data"]) == 2 * (len(LANGS) + 1)  # 2 runs x (languages + avg)
    assert rows[("sdq", "sw")][4:6] == [pytest.approx(75.8), pytest.approx(-1.2)]  # 77.0 - 1.0 * 1.2
    assert rows[("fp", "en")][4:6] == [80.0, 0.0]
