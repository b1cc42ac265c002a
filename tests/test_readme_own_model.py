"""The README's "Quantize your own model" commands, run as written on small data (a tiny model).

1. bring a fine-tuned classifier (``save_pretrained`` dir) and CSV data with a language column;
2. ``python train.py task=custom ... teacher.ckpt=<dir> method=sdq``: the W8A8 SDQ student, per language;
3. ``python -m sdq.export ckpt=<run dir> out=<dir>``, then plain ``transformers`` loads the export with the
   data's label names and the student's predictions, or refuses it (never random weights).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_hf_teacher import save_classifier
from test_own_data import QUICK, SENTIMENT, sentiment_csv

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=600, env=ENV,
                          check=False)


@pytest.mark.slow
def test_readme_quantize_your_own_model(tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    data = sentiment_csv(tmp_path / "data")
    teacher = save_classifier(tmp_path / "my-classifier", list(SENTIMENT))
    run_dir, out = tmp_path / "run", tmp_path / "export"

    proc = _run(str(REPO / "train.py"), *QUICK, "task=custom", f"task.train={data}/train.csv",
                f"task.eval='{data}/{{split}}.csv'", "task.columns.text=review", "task.columns.label=sentiment",
                "task.columns.language=lang", f"teacher.ckpt={teacher}", "method=sdq", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["model"] == "my-classifier" and not (run_dir / "teacher").exists()  # no stage 1
    assert set(results["fidelity"]["custom"]["test"]) == {"en", "it", "xx", "avg"}

    proc = _run("-m", "sdq.export", f"ckpt={run_dir}", f"out={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "export_report.json").read_text())
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["XLMRobertaForSequenceClassification"]
    assert [config["id2label"][str(i)] for i in range(3)] == list(SENTIMENT)

    texts = [line.split('",')[0].strip('"') for line in (data / "test.csv").read_text().splitlines()[1:]]
    if not report["hf_copy"]["written"]:  # refused: transformers says so, it never loads random weights
        with pytest.raises(OSError, match="model.safetensors"):
            AutoModelForSequenceClassification.from_pretrained(out)
        return
    model, info = AutoModelForSequenceClassification.from_pretrained(out, output_loading_info=True)
    assert not (info["missing_keys"] or info["unexpected_keys"] or info["mismatched_keys"]), info
    tok = AutoTokenizer.from_pretrained(out)
    import sdq

    student = sdq.load_student(run_dir / "checkpoints" / "best.ckpt").eval()
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        want = student(**enc).logits.argmax(-1)
        got = model.eval()(**enc).logits.argmax(-1)
    assert (got == want).float().mean().item() >= 0.9  # the copy is the student's weights (no act. quant)
    labels = [p["label"] for p in pipeline("text-classification", model=str(out))(texts)]
    assert labels == [SENTIMENT[i] for i in got.tolist()]
