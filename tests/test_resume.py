"""Exact resume: SIGKILL a training run after a mid-epoch checkpoint, resume it with ``ckpt_path=last``
and compare with an uninterrupted run (bit-exact on CPU), plus an in-process round trip of every
quantizer state through a Lightning checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from sdq.data.synthetic import write_fixture
from sdq.teacher import save_weights

REPO = Path(__file__).resolve().parents[1]
STEPS_PER_EPOCH = 6  # 24 training examples, batch 4


@pytest.fixture(scope="module")
def data_and_teacher(tmp_path_factory) -> tuple[Path, Path]:
    """XGLUE-layout xnli fixture (24 train examples) and a random tiny FP teacher file."""
    from sdq.models import build_model, resolve_backbone

    tmp = tmp_path_factory.mktemp("resume")
    root = write_fixture(tmp / "xglue", tasks=["xnli"], n=24)
    for lang in ("de", "sw"):  # unlabeled pairs for the self-distillation stream
        (tmp / "unlabeled").mkdir(exist_ok=True)
        (tmp / "unlabeled" / f"{lang}.tsv").write_text("".join(f"{lang} p{i} x\t{lang} h{i} y\n" for i in range(9)))
    torch.manual_seed(0)
    teacher = build_model(resolve_backbone("tiny"), "seq_cls", 3)
    return root, save_weights(teacher, tmp / "teacher.safetensors")


def train_cmd(run_dir: Path, root: Path, teacher: Path, *extra: str) -> list[str]:
    return [
        sys.executable, str(REPO / "train.py"), "model=tiny", "task=xnli", "method=sdq", f"data.root={root}",
        f"teacher.ckpt={teacher}", "data.batch_size=4", "data.eval_batch_size=8", "method.epochs=2",
        "method.lr=1e-3", "method.calibrate_batches=2", "checkpoint.every_n_train_steps=4",
        "trainer.enable_progress_bar=false", f"hydra.run.dir={run_dir}", *extra,
    ]


def run_env() -> dict[str, str]:
    # one thread everywhere: float reductions then do not depend on how busy the machine is
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


def student_state(ckpt: dict) -> dict[str, torch.Tensor]:
    return {k: v for k, v in ckpt["state_dict"].items() if k.startswith("student.")}


def assert_same_tensors(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys(), f"{what}: different keys"
    diff = [k for k in a if not torch.equal(a[k], b[k])]
    assert not diff, f"{what}: {len(diff)} tensors differ, e.g. {diff[:3]}"


def flat_optimizer_state(ckpt: dict) -> dict[str, torch.Tensor]:
    out = {}
    for i, opt in enumerate(ckpt["optimizer_states"]):
        for pid, st in opt["state"].items():
            for name, value in st.items():
                out[f"{i}.{pid}.{name}"] = torch.as_tensor(value)
    return out


def unlabeled_args(root: Path) -> list[str]:
    """The unlabeled stream: 9 pairs in each of 2 languages, 2 per batch of 4 (its position is resumed too)."""
    unl = root.parent / "unlabeled"
    return [f"unlabeled.path='{unl}/{{lang}}.tsv'", "unlabeled.header=false", "unlabeled.columns.text=0",
            "unlabeled.columns.text_pair=1", "unlabeled.ratio=0.5"]


@pytest.mark.slow  # three training subprocesses (~45 s on 2 cores) per case
@pytest.mark.parametrize("unlabeled", [False, True], ids=["labelled", "with-unlabeled"])
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tmp_path: Path, data_and_teacher, unlabeled) -> None:
    root, teacher = data_and_teacher
    env = run_env()
    extra = unlabeled_args(root) if unlabeled else []
    ref_dir, run_dir = tmp_path / "uninterrupted", tmp_path / "killed"
    ref = subprocess.Popen(train_cmd(ref_dir, root, teacher, *extra), cwd=REPO, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    victim = subprocess.Popen(train_cmd(run_dir, root, teacher, *extra), cwd=REPO, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 240
    while not last.exists() and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert last.exists(), "no checkpoint appeared before the run ended"
    assert not (run_dir / "results.json").exists(), "the run finished before it was killed"
    killed_at = torch.load(last, map_location="cpu", weights_only=False)["global_step"]

    resumed = subprocess.run(train_cmd(run_dir, root, teacher, *extra, "ckpt_path=last"), check=False, cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _, ref_err = ref.communicate(timeout=240)
    assert ref.returncode == 0, ref_err[-3000:]

    # the resumed run really continued (mid-epoch when the kill came before the epoch end)
    log = (run_dir / "train.log").read_text()
    assert f"resuming from {last}" in log
    assert ("unlabeled: 18 examples (de 9, sw 9), 2 per step" in log) == unlabeled
    print(f"killed at global step {killed_at} (epoch length {STEPS_PER_EPOCH})")
    assert 0 < killed_at < 2 * STEPS_PER_EPOCH
    assert sorted(p.name for p in (run_dir / "csv").iterdir()) == ["version_0", "version_1"]  # logs kept
    assert not list((run_dir / "checkpoints").glob(".*tmp*")), "half-written checkpoint left behind"

    want = json.loads((ref_dir / "results.json").read_text())
    got = json.loads((run_dir / "results.json").read_text())
    for key in ("xnli", "teacher", "fidelity", "layer_errors"):
        assert got[key] == want[key], key
    for name in ("last.ckpt", "best.ckpt"):
        a = torch.load(ref_dir / "checkpoints" / name, map_location="cpu", weights_only=False)
        b = torch.load(run_dir / "checkpoints" / name, map_location="cpu", weights_only=False)
        assert a["global_step"] == b["global_step"] == 2 * STEPS_PER_EPOCH or name == "best.ckpt"
        sa, sb = student_state(a), student_state(b)
        assert any(k.endswith("act_quantizer.zero_point") for k in sa), "no quantizer state in the checkpoint?"
        assert_same_tensors(sa, sb, f"{name} student + quantizer state")
        assert_same_tensors(flat_optimizer_state(a), flat_optimizer_state(b), f"{name} optimizer state")
        assert a["lr_schedulers"] == b["lr_schedulers"]


def _quant_module(seed: int):
    """A tiny SDQ student with uniform (minmax/EMA), LSQ, k-means and attention quantizers, calibrated."""
    from sdq.distill import DistillLoss
    from sdq.lit.module import SDQModule, TaskInfo
    from sdq.models import build_model, resolve_backbone
    from sdq.quant import QuantConfig, prepare, set_phase

    torch.manual_seed(seed)
    student = build_model(resolve_backbone("tiny"), "seq_cls", 3)
    prepare(student, QuantConfig.from_dict({
        "weight": {"bits": 4, "scheme": "lsq", "granularity": "channel"},
        "act": {"bits": 8, "symmetric": False, "granularity": "tensor", "observer": "ema"},
        "embedding": {"bits": 8, "granularity": "row"},
        "attention": {"bits": 8, "symmetric": False, "granularity": "tensor", "observer": "minmax"},
        "overrides": {r"layer\.1\.output\.dense": {"bits": 8, "scheme": "uniform", "observer": "minmax"},
                      r"layer\.0\.output\.dense": {"bits": 3, "scheme": "kmeans", "granularity": "channel"}},
    }))
    student.eval()
    set_phase(student, "calibrate")
    with torch.no_grad():
        student(input_ids=torch.randint(5, 1000, (2, 7), generator=torch.Generator().manual_seed(seed)))
    set_phase(student, "learn")
    info = TaskInfo("xnli", "seq_cls", "acc", ("a", "b", "c"))
    return SDQModule(student, None, DistillLoss(ce=1.0), info, ["en"], ["en"], lr=1e-3, fingerprint={"t": 1})


def test_quantizer_state_round_trips_through_lightning_checkpoint(tmp_path: Path) -> None:
    from sdq.lit.checkpoint_io import AtomicCheckpointIO
    from sdq.quant.base import QuantizerBase

    a, b = _quant_module(seed=1), _quant_module(seed=2)  # b: other weights and other calibration
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, max_epochs=0,
                         plugins=[AtomicCheckpointIO()], enable_progress_bar=False, enable_model_summary=False)
    trainer.strategy.connect(a)
    trainer.save_checkpoint(tmp_path / "q.ckpt")
    ckpt = torch.load(tmp_path / "q.ckpt", map_location="cpu", weights_only=True)  # plain types only
    b.on_load_checkpoint(ckpt)
    b.load_state_dict(ckpt["state_dict"])  # strict, as Lightning loads it

    qa = {n: m for n, m in a.named_modules() if isinstance(m, QuantizerBase)}
    qb = {n: m for n, m in b.named_modules() if isinstance(m, QuantizerBase)}
    schemes = {m.cfg.scheme for m in qa.values()}
    assert {"lsq", "kmeans", "uniform"} <= schemes and any(".sdq_attn" in n for n in qa), schemes
    assert qa.keys() == qb.keys()
    for name, q in qa.items():
        assert_same_tensors(dict(q.state_dict()), dict(qb[name].state_dict()), name)
        assert (q._phase, q._enabled, q._initialized) == (qb[name]._phase, qb[name]._enabled, qb[name]._initialized)
    assert_same_tensors(a.state_dict(), b.state_dict(), "module")
    x = torch.randint(5, 1000, (3, 9), generator=torch.Generator().manual_seed(3))
    a.eval(), b.eval()
    with torch.no_grad():
        assert torch.equal(a.student(input_ids=x).logits, b.student(input_ids=x).logits)


def test_resume_resolution_per_stage(tmp_path: Path) -> None:
    """``ckpt_path=last`` / ``resume=true``: every stage (teacher too) continues from its own last.ckpt."""
    from omegaconf import OmegaConf

    from sdq.errors import SdqError
    from sdq.lit.resume import resolve_ckpt_path, resume_requested

    def resolve(cfg, stage_dir, ckpt_path):  # what a stage passes: its own path + the run's resume choice
        return resolve_ckpt_path(stage_dir, ckpt_path, resume_requested(cfg.ckpt_path, cfg.resume))

    student, teacher = tmp_path, tmp_path / "teacher"
    (student / "checkpoints").mkdir()
    (student / "checkpoints" / "last.ckpt").write_bytes(b"x")
    stale = student / "checkpoints" / ".last.ckpt.tmp123"  # a write cut short by SIGKILL
    stale.write_bytes(b"half")
    last = OmegaConf.create({"ckpt_path": "last", "resume": False})
    assert resolve(last, student, last.ckpt_path) == str(student / "checkpoints" / "last.ckpt")
    assert not stale.exists()
    assert resolve(last, teacher, None) is None  # teacher stage: nothing saved yet -> fresh
    (teacher / "checkpoints").mkdir(parents=True)
    (teacher / "checkpoints" / "last.ckpt").write_bytes(b"x")
    assert resolve(last, teacher, None) == str(teacher / "checkpoints" / "last.ckpt")
    alias = OmegaConf.create({"ckpt_path": None, "resume": True})
    assert resolve(alias, teacher, None) == str(teacher / "checkpoints" / "last.ckpt")
    explicit = OmegaConf.create({"ckpt_path": str(student / "checkpoints" / "last.ckpt"), "resume": False})
    assert resolve(explicit, teacher, None) is None  # an explicit file is for the student stage
    fresh = OmegaConf.create({"ckpt_path": None, "resume": False})
    assert resolve(fresh, student, None) is None
    with pytest.raises(SdqError, match="does not exist"):
        resolve(fresh, student, tmp_path / "nope.ckpt")
