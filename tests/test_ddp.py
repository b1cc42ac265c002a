"""DDP with 2 CPU processes (gloo) matches one process with the same global batch; DDP sharding helpers.

The comparison uses weights-only 8-bit QAT (``quant=w8``: weight ranges refit from the synchronised
weights at every step) on a dropout-free copy of the tiny model, and ``data.max_length=8`` so no batch
is padded: the two runs then differ only by float summation order. Tolerances: per-language metrics
and teacher metrics equal, fidelity KL within 1e-6, every student tensor (weights and quantizer
state) within 1e-5 (measured: 1.2e-7).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sdq.data.synthetic import write_fixture
from sdq.lit.data import EvenShardBatches, ResumableSampler
from sdq.teacher import save_weights

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("n", "world"), [(1, 1), (5, 1), (2, 2), (5, 2), (24, 2), (37, 2), (5, 3), (37, 3)])
def test_even_shard_batches_cover_every_example_once_in_lockstep(n: int, world: int) -> None:
    parts = [EvenShardBatches(n, 4, world, r).batches for r in range(world)]
    assert len({len(p) for p in parts}) == 1  # same number of batches on every rank
    assert sorted(i for p in parts for b in p for i in b) == list(range(n))  # each example exactly once
    assert all(1 <= len(b) <= 4 for p in parts for b in p)


def test_even_shard_batches_refuse_fewer_examples_than_ranks() -> None:
    from sdq.errors import SdqError

    with pytest.raises(SdqError, match="fewer than the 2 DDP processes"):
        EvenShardBatches(1, 4, 2, 0, where="xnli dev sw")


def test_rank_shards_of_the_train_sampler_form_the_single_process_batches() -> None:
    data = list(range(24))
    single = list(ResumableSampler(data, 1, 0, seed=7))
    ranks = [list(ResumableSampler(data, 2, r, seed=7)) for r in range(2)]
    for step in range(6):  # per-device batch 2 on 2 ranks == global batch 4 in one process
        union = ranks[0][2 * step:2 * step + 2] + ranks[1][2 * step:2 * step + 2]
        assert sorted(union) == sorted(single[4 * step:4 * step + 4])
    s = ResumableSampler(data, 1, 0, seed=7)
    s.set_epoch(1)
    epoch1 = list(s)
    assert epoch1 != single and sorted(epoch1) == data  # new order per epoch, by seed + epoch only
    s.set_epoch(1)
    s.skip(8)
    assert list(s) == epoch1[8:]  # resume: the rest of the epoch, then whole epochs again
    assert list(s) == epoch1


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path, Path]:
    """Fixture data, a dropout-free tiny model dir (a local HF model, as a user would pass one) and a teacher."""
    from sdq.models import build_model, resolve_backbone

    tmp = tmp_path_factory.mktemp("ddp")
    root = write_fixture(tmp / "xglue", tasks=["xnli"], n=24)
    model_dir = tmp / "tiny_nodropout"
    shutil.copytree(resolve_backbone("tiny"), model_dir)
    cfg = json.loads((model_dir / "config.json").read_text())
    cfg.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (model_dir / "config.json").write_text(json.dumps(cfg))
    torch.manual_seed(0)
    teacher = build_model(str(model_dir), "seq_cls", 3)
    return root, model_dir, save_weights(teacher, tmp / "teacher.safetensors")


@pytest.mark.slow  # two training runs in parallel, the DDP one launching a second process (~40 s)
def test_ddp_two_cpu_processes_match_single_process(tmp_path: Path, setup) -> None:
    root, model_dir, teacher = setup
    common = [
        sys.executable, str(REPO / "train.py"), "model=tiny", f"model.name_or_path={model_dir}", "task=xnli",
        f"data.root={root}", f"teacher.ckpt={teacher}", "method=sdq", "quant=w8", "method.epochs=2",
        "method.lr=1e-3", "data.max_length=8", "checkpoint.every_n_train_steps=0",
        "trainer.enable_progress_bar=false",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    single = subprocess.Popen([*common, "data.batch_size=4", "data.eval_batch_size=8",
                               f"hydra.run.dir={tmp_path / 'single'}"], cwd=REPO, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ddp = subprocess.run([*common, "trainer=ddp", "data.batch_size=2", "data.eval_batch_size=4",
                          f"hydra.run.dir={tmp_path / 'ddp'}"], check=False, cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    _, single_err = single.communicate(timeout=300)
    assert single.returncode == 0, single_err[-3000:]
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert (tmp_path / "ddp" / "train_ddp_process_1.log").exists()  # the second rank really ran

    a = json.loads((tmp_path / "single" / "results.json").read_text())
    b = json.loads((tmp_path / "ddp" / "results.json").read_text())
    assert a["xnli"] == b["xnli"] and a["teacher"] == b["teacher"]
    for split in ("dev", "test"):
        for lang, fa in a["fidelity"]["xnli"][split].items():
            fb = b["fidelity"]["xnli"][split][lang]
            assert fa["agree"] == fb["agree"] and abs(fa["kl"] - fb["kl"]) <= 1e-6, (split, lang, fa, fb)
    sa = torch.load(tmp_path / "single" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    sb = torch.load(tmp_path / "ddp" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert sa["global_step"] == sb["global_step"] == 12  # 2 epochs x 6 global batches of 4
    student = {k: v for k, v in sa["state_dict"].items() if k.startswith("student.")}
    assert any(k.endswith("weight_quantizer.scale") for k in student)
    for k, v in student.items():
        w = sb["state_dict"][k]
        if v.is_floating_point():
            assert torch.allclose(v, w, rtol=0, atol=1e-5), (k, (v - w).abs().max().item())
        else:
            assert torch.equal(v, w), k
