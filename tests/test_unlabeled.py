"""Unlabeled self-distillation data: reading and per-language counts (exact), the mixed batch stream (order,
skip = resume, DDP slices), the label-free CE, and a tiny end-to-end run (plus its refusal without a teacher)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sdq.data.unlabeled import UnlabeledSpec, language_counts, read_unlabeled
from sdq.distill.losses import task_loss
from sdq.errors import SdqConfigError, SdqDataError
from sdq.lit.data import MixedBatchSampler, ResumableSampler

REPO = Path(__file__).resolve().parents[1]


def write_pairs(root: Path, langs: dict[str, int]) -> Path:
    """``root/{lang}.tsv``: n headerless premise<TAB>hypothesis lines per language."""
    root.mkdir(parents=True, exist_ok=True)
    for lang, n in langs.items():
        (root / f"{lang}.tsv").write_text("".join(f"{lang} premise {i}\t{lang} hypothesis {i}\n" for i in range(n)),
                                          encoding="utf-8")
    return root


def test_language_counts_uniform_and_temperature():
    assert language_counts({"de": 5010, "sw": 900}, 1000) == {"de": 1000, "sw": 900}
    assert language_counts({"de": 5010, "sw": 900}, None) == {"de": 5010, "sw": 900}
    # total 1000 shared ~ n^(1/2): 30 : 10 -> 750 : 250, sw capped at its 100
    assert language_counts({"en": 900, "sw": 100}, None, "temperature", 2.0) == {"en": 750, "sw": 100}
    # T = 1: as the data is: the capped total 300 + 200 = 500 shared 400 : 200
    assert language_counts({"a": 400, "b": 200}, 300, "temperature", 1.0) == {"a": 333, "b": 167}


def test_read_template_headerless_pairs(tmp_path):
    root = write_pairs(tmp_path / "u", {"de": 50, "sw": 8})
    spec = UnlabeledSpec.from_config({"path": str(root / "{lang}.tsv"), "header": False,
                                      "columns": {"text": 0, "text_pair": 1}, "per_language": 10})
    rows = read_unlabeled(spec, seed=1)
    assert {k: len(v) for k, v in rows.items()} == {"de": 10, "sw": 8}
    assert rows["sw"][0] == {"text": "sw premise 0", "text_pair": "sw hypothesis 0", "lang": "sw",
                             "where": f"{root / 'sw.tsv'}:1"}
    assert rows == read_unlabeled(spec, seed=1) and rows != read_unlabeled(spec, seed=2)  # seeded draw
    only = UnlabeledSpec.from_config({**spec.__dict__, "columns": {"text": 0}, "languages": ["sw"]})
    assert list(read_unlabeled(only)) == ["sw"] and read_unlabeled(only)["sw"][0]["text_pair"] is None


def test_read_csv_with_language_column_and_jsonl(tmp_path):
    (tmp_path / "a.csv").write_text('sentence,lang\n"hello, world",en\nciao,it\n', encoding="utf-8")
    (tmp_path / "b.jsonl").write_text('{"sentence": "hallo", "lang": "de"}\n', encoding="utf-8")
    for path in (tmp_path / "a.csv", tmp_path / "b.jsonl"):
        spec = UnlabeledSpec.from_config({"path": str(path), "columns": {"text": "sentence", "language": "lang"},
                                          "per_language": None})
        rows = read_unlabeled(spec)
        assert sum(len(v) for v in rows.values()) == (2 if path.suffix == ".csv" else 1)
    assert read_unlabeled(UnlabeledSpec.from_config(
        {"path": str(tmp_path / "a.csv"), "columns": {"text": "sentence", "language": "lang"}}))["en"][0]["text"] \
        == "hello, world"


@pytest.mark.parametrize("content, match", [
    (None, "no file matches"),
    ("de premise 0\t\n", r"de\.tsv:1: no text pair"),
    ("\n", "no rows"),
])
def test_bad_unlabeled_input_is_one_clear_error(tmp_path, content, match):
    if content is not None:
        (tmp_path / "de.tsv").write_text(content, encoding="utf-8")
    spec = UnlabeledSpec.from_config({"path": str(tmp_path / "{lang}.tsv"), "header": False,
                                      "columns": {"text": 0, "text_pair": 1}})
    with pytest.raises(SdqDataError, match=match):
        read_unlabeled(spec)


def test_bad_unlabeled_config():
    with pytest.raises(SdqConfigError, match="sampling"):
        UnlabeledSpec.from_config({"path": "x", "sampling": "random"})
    with pytest.raises(SdqConfigError, match="ratio"):
        UnlabeledSpec.from_config({"path": "x", "ratio": 0})
    assert not UnlabeledSpec.from_config({"path": None}).enabled


def _batches(sampler, epoch=0):
    sampler.sampler.set_epoch(epoch)
    return list(iter(sampler))


def test_mixed_batches_labelled_order_then_pool_stream():
    labelled = list(range(10))
    ms = MixedBatchSampler(ResumableSampler(labelled, seed=3), batch_size=4, n_labelled=10, n_unlabeled=7,
                           per_step=3, seed=3)
    plain = list(iter(ResumableSampler(labelled, seed=3)))
    epoch0 = _batches(ms)
    assert len(ms) == len(epoch0) == 3 and [len(b) for b in epoch0] == [7, 7, 5]
    assert [i for b in epoch0 for i in b if i < 10] == plain  # the labelled order is untouched
    stream = [i - 10 for b in epoch0 + _batches(ms, 1) for i in b if i >= 10]  # 18 positions over a pool of 7
    assert sorted(stream[:7]) == list(range(7)) and sorted(stream[7:14]) == list(range(7))  # each cycle: all
    assert stream[:7] != stream[7:14]  # a new permutation per cycle


def test_mixed_batches_skip_resumes_both_streams_and_ddp_slices_disjoint():
    data = list(range(12))
    full = _batches(MixedBatchSampler(ResumableSampler(data, seed=0), 3, 12, 50, 2, seed=0), epoch=1)
    resumed = MixedBatchSampler(ResumableSampler(data, seed=0), 3, 12, 50, 2, seed=0)
    resumed.sampler.set_epoch(1)
    resumed.skip(2)
    assert list(iter(resumed)) == full[2:]
    ranks = [_batches(MixedBatchSampler(ResumableSampler(data, 2, r, seed=0), 3, 12, 50, 2, 0, 2, r))
             for r in (0, 1)]
    single = _batches(MixedBatchSampler(ResumableSampler(data, seed=0), 3, 12, 50, 4, seed=0))
    for k, (b0, b1) in enumerate(zip(*ranks, strict=True)):  # the union of the ranks' pool slices = one stream
        assert b0[3:] + b1[3:] == single[k][-4:]


def test_label_free_batch_has_zero_ce_with_a_gradient_path():
    logits = torch.randn(4, 3, requires_grad=True)
    loss = task_loss(logits, torch.full((4,), -100))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(logits.grad, torch.zeros(4, 3))
    mixed = task_loss(logits, torch.tensor([1, -100, -100, 2]))
    assert torch.allclose(mixed, torch.nn.functional.cross_entropy(logits[[0, 3]], torch.tensor([1, 2])))


@pytest.mark.slow
def test_tiny_run_distils_on_unlabeled_pairs_and_qat_refuses(tmp_path):
    from sdq.data.synthetic import write_fixture

    root = write_fixture(tmp_path / "xglue", tasks=["xnli"], n=12)
    unl = write_pairs(tmp_path / "unl", {"de": 20, "sw": 20})
    common = [sys.executable, str(REPO / "train.py"), "model=tiny", "task=xnli", f"data.root={root}",
              "data.batch_size=4", "data.eval_batch_size=8", "method.epochs=1", "trainer.enable_progress_bar=false",
              "logger=none", "diagnostics.layer_errors=false", "checkpoint.every_n_train_steps=0",
              f"unlabeled.path='{unl}/{{lang}}.tsv'", "unlabeled.header=false", "unlabeled.columns.text=0",
              "unlabeled.columns.text_pair=1", "unlabeled.per_language=6", "unlabeled.ratio=0.5"]
    proc = subprocess.run([*common, "method=sdq", f"hydra.run.dir={tmp_path / 'run'}"], cwd=REPO,
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (tmp_path / "run" / "train.log").read_text()
    assert "unlabeled: 12 examples (de 6, sw 6), 2 per step beside 4 labelled" in log
    proc = subprocess.run([*common, "method=qat", f"hydra.run.dir={tmp_path / 'qat'}"], cwd=REPO,
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith(
        "error: unlabeled data needs a teacher"), proc.stderr[-2000:]


@pytest.mark.slow
def test_tiny_ptq_calibrates_on_unlabeled_pairs(tmp_path):
    """method.calibrate_unlabeled=N: the pool's inputs reach the activation observers of a PTQ student."""
    from sdq.data.synthetic import write_fixture

    root = write_fixture(tmp_path / "xglue", tasks=["xnli"], n=12)
    unl = tmp_path / "unl"  # far longer inputs than the fixture's: ranges the task batches never reach
    unl.mkdir()
    (unl / "sw.tsv").write_text("".join(f"{' '.join(['zz'] * 30)} {i}\t{'yy ' * 20}{i}\n" for i in range(8)),
                                encoding="utf-8")
    base = [sys.executable, str(REPO / "train.py"), "model=tiny", "task=xnli", f"data.root={root}",
            "data.batch_size=4", "data.eval_batch_size=8", "trainer.enable_progress_bar=false", "logger=none",
            "diagnostics.layer_errors=false", "method=ptq", "method.calibrate_batches=1",
            "method.calibrate_multilingual=0"]
    pool = [f"unlabeled.path='{unl}/{{lang}}.tsv'", "unlabeled.header=false", "unlabeled.columns.text=0",
            "unlabeled.columns.text_pair=1"]
    ranges = {}
    for name, extra in (("off", []), ("on", [*pool, "method.calibrate_unlabeled=8"])):
        proc = subprocess.run([*base, *extra, f"hydra.run.dir={tmp_path / name}"], cwd=REPO, capture_output=True,
                              text=True, timeout=600, check=False)
        assert proc.returncode == 0, proc.stderr[-3000:]
        state = torch.load(tmp_path / name / "checkpoints" / "last.ckpt", map_location="cpu",
                           weights_only=False)["state_dict"]
        ranges[name] = {k: v for k, v in state.items() if "act_quantizer" in k and k.endswith("max_val")}
    assert "unlabeled: 8 examples (sw 8), calibration" in (tmp_path / "on" / "train.log").read_text()
    assert ranges["on"].keys() == ranges["off"].keys() and ranges["on"]
    # min-max ranges only widen with more inputs; the pool's long inputs widen some of them
    assert all((ranges["on"][k] >= ranges["off"][k]).all() for k in ranges["on"])
    assert any((ranges["on"][k] > ranges["off"][k]).any() for k in ranges["on"])
    refused = tmp_path / "refused"  # a pool that nothing uses: one error line, nothing written
    proc = subprocess.run([*base, *pool, f"hydra.run.dir={refused}"], cwd=REPO, capture_output=True, text=True,
                          timeout=600, check=False)
    assert proc.returncode == 2 and "method.calibrate_unlabeled=N" in proc.stderr.strip().splitlines()[-1]
    assert not (refused / "checkpoints").exists()


def test_calibration_sample_is_a_seeded_draw_in_batches():
    from sdq.data.collate import Collator
    from sdq.lit.stage import calibration_sample

    pool = [{"input_ids": [0, i + 3, 2], "labels": -100, "group": -1} for i in range(10)]
    batches = calibration_sample(pool, 7, Collator(pad_id=1, token_task=False), 3, seed=5)
    assert [len(b["input_ids"]) for b in batches] == [3, 3, 1]
    drawn = torch.cat([b["input_ids"][:, 1] for b in batches]).tolist()
    assert len(set(drawn)) == 7 and set(drawn) <= set(range(3, 13))  # 7 distinct examples of the pool
    again = calibration_sample(pool, 7, Collator(pad_id=1, token_task=False), 3, seed=5)
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(batches, again, strict=True))
    assert len(torch.cat([b["input_ids"] for b in calibration_sample(pool, 50, Collator(1, False), 4, 0)])) == 10
    assert calibration_sample(pool, 0, Collator(1, False), 4, 0) == []
