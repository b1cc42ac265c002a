"""Bad input, tried as a new user would: one ``error:`` line (what, where, how to fix), exit status 2, no
traceback and nothing half-written (no results.json, no temporary or unreadable checkpoint).

The ``python train.py`` cases (at the end) start with the module's first test and run as subprocesses
while the other cases go through the same entry path in-process (``sdq.cli.guarded`` around
``sdq.pipeline.run``).
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from sdq.cli import EXIT_USER_ERROR, guarded
from sdq.data.synthetic import write_fixture
from sdq.data.xglue import split_path
from sdq.teacher import save_weights

REPO = Path(__file__).resolve().parents[1]
TRAIN_FILE = ("xnli", "en", "train")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Good fixture data, one broken copy per data case, and two teacher files (right / wrong shape)."""
    from sdq.models import build_model, resolve_backbone

    tmp = tmp_path_factory.mktemp("bad")
    out = {"root": write_fixture(tmp / "good", tasks=["xnli"], n=12)}
    for case in ("empty", "malformed", "label", "missing"):
        root = out[case] = write_fixture(tmp / case, tasks=["xnli"], n=12)
        train = split_path(root, *TRAIN_FILE)
        lines = train.read_text().splitlines()
        if case == "empty":
            train.write_text("")
        elif case == "malformed":
            train.write_text("\n".join(lines[:4] + ["a premise without hypothesis or label"] + lines[4:]) + "\n")
        elif case == "label":
            train.write_text("\n".join(lines[:6] + ["a premise\ta hypothesis\tmaybe"] + lines[6:]) + "\n")
        else:
            train.unlink()
    torch.manual_seed(0)
    tiny = resolve_backbone("tiny")
    save_weights(build_model(tiny, "seq_cls", 3), tmp / "teacher.safetensors")
    save_weights(build_model(tiny, "seq_cls", 2), tmp / "teacher_pawsx.safetensors")
    torch.manual_seed(1)
    save_weights(build_model(tiny, "seq_cls", 3), tmp / "other_teacher.safetensors")
    out["teacher"], out["wrong_teacher"] = tmp / "teacher.safetensors", tmp / "teacher_pawsx.safetensors"
    out["other_teacher"] = tmp / "other_teacher.safetensors"
    out["empty_dir"] = tmp / "no_xglue_here"
    out["empty_dir"].mkdir()
    return out


def base(files: dict[str, Path], root: Path | None = None) -> list[str]:
    return ["model=tiny", "task=xnli", "method=qat", f"data.root={root or files['root']}",
            f"teacher.ckpt={files['teacher']}", "logger=none", "data.batch_size=4", "data.eval_batch_size=8",
            "method.epochs=1", "method.calibrate_batches=1", "checkpoint.every_n_train_steps=1",
            "trainer.enable_progress_bar=false"]


def assert_clean(stderr: str, code: int, run_dir: Path, *needles: str) -> str:
    """Exit 2, one ``error:`` line holding every needle, no traceback, nothing half-written in run_dir."""
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert code == EXIT_USER_ERROR and len(lines) == 1, (code, stderr[-2000:])
    assert "Traceback" not in stderr, stderr[-2000:]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert not (run_dir / "results.json").exists()
    assert not [p for p in run_dir.rglob("*") if ".tmp" in p.name], "temporary file left behind"
    for ckpt in run_dir.rglob("*.ckpt"):  # whatever checkpoint exists is complete and finite
        state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()), ckpt
    return lines[0]


# ------------------------------------------------------------------------------------ in-process
def run_guarded(files, overrides: list[str], run_dir: Path, capsys, root: Path | None = None) -> tuple[int, str]:
    from sdq.pipeline import run

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*base(files, root), *overrides])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        guarded(run)(cfg, run_dir=run_dir)
    return exc.value.code, capsys.readouterr().err


@pytest.mark.parametrize(("overrides", "needles"), [
    (["bits=9"], ["bits=9"]),
    (["bits=33"], ["bits=33"]),
    (["quant.weight.granularity=group", "+quant.weight.group_size=7"], ["group_size=7", "divisor"]),
    (["data.languages=[en,xx]"], ["xx", "xnli"]),
    (["method.name=foo"], ["method='foo'", "qat"]),
    (["task.name=foo"], ["foo", "xnli"]),
    (["teacher.ckpt={wrong_teacher}"], ["teacher_pawsx.safetensors", "mis-shaped", "task="]),
    (["ckpt_path={empty_dir}/last.ckpt"], ["ckpt_path=", "does not exist", "ckpt_path=last"]),
    (["data.root={empty_dir}"], ["no_xglue_here", "data.root"]),
    (["method.student_dropout=1.5"], ["method.student_dropout=1.5", "[0, 1)"]),
    (["method.calibrate_multilingual=-3"], ["method.calibrate_multilingual=-3", ">= 0"]),
    (["method.calibrate_unlabeled=1.5"], ["method.calibrate_unlabeled=1.5", ">= 0"]),
    (["method=ptq", "method.bias_correction=1"], ["method.bias_correction=1", "true or false"]),
    (["method=ptq", "method.bias_correction=true", "method.calibrate_batches=0", "method.calibrate_multilingual=0"],
     ["method.bias_correction=true", "method.calibrate_batches=16"]),
    (["method=ptq", "method.bias_correction=true", "method.calibrate_batches=0", "method.calibrate_multilingual=0",
      "method.calibrate_unlabeled=64"], ["method.bias_correction=true", "unlabeled= source"]),  # unlabeled=none
    (["method=ptq", "method.gptq=yes"], ["method.gptq='yes'", "true or false"]),
    (["method=ptq", "method.gptq=true", "method.calibrate_batches=0", "method.calibrate_multilingual=0"],
     ["method.gptq=true", "method.calibrate_batches=16"]),
    (["method=ptq", "method.gptq=true", "method.calibrate_batches=1", "quant=kmeans4"],
     ["method.gptq=true", "scheme='kmeans'", "method.gptq=false"]),
    (["method=ptq", "method.gptq_teacher=true"], ["method.gptq_teacher=true", "method.gptq=true as well"]),
    (["method=ptq", "method.gptq=true", "method.gptq_teacher=2"], ["method.gptq_teacher=2", "true or false"]),
    (["+quant.weight.kmeans_weighting=act"], ["kmeans_weighting='act'", "scheme=kmeans"]),
    (["method.loss.ce=-1"], ["ce=-1 is negative", "config: method.loss"]),  # inside instantiate
    (["method.loss.hidden=abc"], ["hidden='abc' is not a number", "config: method.loss"]),
    (["data.batch_size=0"], ["data.batch_size=0", "positive integer"]),
], ids=["bits9", "bits33", "group_size", "language", "method", "task", "teacher_shape", "ckpt_missing", "no_data",
        "student_dropout", "calibrate_multilingual", "calibrate_unlabeled",
        "bias_correction_type", "bias_correction_no_batches",
        "bias_correction_no_pool", "gptq_type", "gptq_no_batches", "gptq_kmeans", "gptq_teacher_alone",
        "gptq_teacher_type", "kmeans_weighting", "loss_weight", "loss_weight_text", "batch_size"])
def test_config_bad_input(files, tmp_path: Path, capsys, overrides: list[str], needles: list[str]) -> None:
    code, err = run_guarded(files, [o.format(**files) for o in overrides], tmp_path / "run", capsys)
    assert_clean(err, code, tmp_path / "run", *needles)


@pytest.mark.parametrize(("case", "needles"), [
    ("empty", ["multinli.train.en.tsv", "empty"]),
    ("label", ["multinli.train.en.tsv:7:", "'maybe'", "labels:"]),
    ("missing", ["multinli.train.en.tsv", "missing", "data.root"]),
])
def test_data_bad_input(files, tmp_path: Path, capsys, case: str, needles: list[str]) -> None:
    code, err = run_guarded(files, [], tmp_path / "run", capsys, root=files[case])
    assert_clean(err, code, tmp_path / "run", *needles)


def test_checkpoint_from_another_config_or_teacher(files, tmp_path: Path, capsys) -> None:
    from sdq.pipeline import run

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*base(files), "quant=w8", "+trainer.max_steps=1",
                                                       "+trainer.limit_val_batches=1", "+trainer.limit_test_batches=1"])
    run(cfg, run_dir=tmp_path / "w8")
    ckpt = tmp_path / "w8" / "checkpoints" / "last.ckpt"
    code, err = run_guarded(files, ["quant=w4", f"ckpt_path={ckpt}"], tmp_path / "a", capsys)
    assert_clean(err, code, tmp_path / "a", str(ckpt), "different run config", "quant")
    # same config, another FP teacher: the student would silently distil from a different model
    code, err = run_guarded(files, ["quant=w8", f"teacher.ckpt={files['other_teacher']}", f"ckpt_path={ckpt}"],
                            tmp_path / "t", capsys)
    assert_clean(err, code, tmp_path / "t", "another FP teacher", "other_teacher.safetensors", "teacher.ckpt=")
    # the same checkpoint without its sdq metadata (another tool / an old version): the shapes tell
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    del state["sdq"]
    torch.save(state, tmp_path / "foreign.ckpt")
    code, err = run_guarded(files, ["quant=w8", "quant.weight.granularity=tensor",
                                    f"ckpt_path={tmp_path / 'foreign.ckpt'}"], tmp_path / "b", capsys)
    assert_clean(err, code, tmp_path / "b", "does not fit this model", "mis-shaped", "weight_quantizer")


def test_nan_loss_stops_names_the_step_and_keeps_the_last_checkpoint(files, tmp_path: Path, capsys) -> None:
    run_dir = tmp_path / "run"
    code, err = run_guarded(files, ["method.lr=1e30"], run_dir, capsys)  # the first update blows up
    line = assert_clean(err, code, run_dir, "loss is ", "at global step 1", "method.lr")
    last = run_dir / "checkpoints" / "last.ckpt"
    assert str(last) in line and torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 1


def test_disk_full_while_checkpointing_keeps_the_previous_checkpoint(files, tmp_path: Path, capsys,
                                                                    monkeypatch) -> None:
    from sdq.lit import checkpoint_io

    real_save, calls = torch.save, []

    def save(obj, f, *args, **kwargs):
        if ".ckpt.tmp" in str(getattr(f, "name", f)):
            calls.append(f.name)
            if len(calls) == 2:  # the second checkpoint: half written, then the disk is full
                f.write(b"\0" * 1024)
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint_io.torch, "save", save)
    run_dir = tmp_path / "run"
    code, err = run_guarded(files, [], run_dir, capsys)
    assert_clean(err, code, run_dir, "no space left on device", "last.ckpt", "ckpt_path=last")
    kept = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert kept["global_step"] == 1 and len(calls) == 2


def test_wandb_not_logged_in_logs_offline(files, tmp_path: Path, monkeypatch) -> None:
    from sdq.pipeline import run

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no_netrc"))  # not logged in: W&B runs offline
    monkeypatch.setenv("WANDB_SILENT", "true")
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*base(files), "logger=wandb", "+trainer.max_steps=1",
                                                       "+trainer.limit_val_batches=1"])
    results = guarded(run)(cfg, run_dir=tmp_path / "run")
    assert list((tmp_path / "run").glob("wandb/offline-run-*"))
    assert json.loads((tmp_path / "run" / "results.json").read_text())["xnli"] == results["xnli"]


# ----------------------------------------------------------------------------- python train.py ...
CLI_CASES = {
    "bits0": ["bits=0"],
    "unknown_model": ["model.name_or_path=no-such-org/no-such-model"],
    "malformed_line": ["data.root={malformed}"],
    "unknown_task_group": ["task=foo"],
    "unknown_key": ["data.batchsize=4"],
    "malformed_override": ["data.languages=[en,de"],
}


@pytest.fixture(scope="module", autouse=True)
def cli_started(files, tmp_path_factory) -> Iterator[dict[str, tuple[subprocess.Popen, Path]]]:
    """Start every CLI case with the module's first test: they run while the in-process cases do."""
    tmp = tmp_path_factory.mktemp("cli")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    procs = {}
    for name, extra in CLI_CASES.items():
        run_dir = tmp / name
        args = [a.format(**files) for a in extra]
        cmd = [sys.executable, str(REPO / "train.py"), *base(files), *args, f"hydra.run.dir={run_dir}"]
        procs[name] = (subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                        text=True), run_dir)
    yield procs
    for proc, _ in procs.values():  # a failed or interrupted module: no orphan
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def cli(cli_started) -> dict[str, tuple[int, str, Path]]:
    """name -> (exit status, stderr, run dir) of the CLI cases."""
    out = {}
    for name, (proc, run_dir) in cli_started.items():
        _, err = proc.communicate(timeout=300)
        out[name] = (proc.returncode, err, run_dir)
    return out


@pytest.mark.parametrize(("case", "needles"), [
    ("bits0", ["bits=0", "from 1 to 8"]),
    ("unknown_model", ["no-such-org/no-such-model"]),
    ("malformed_line", [f"{split_path('ROOT', *TRAIN_FILE).relative_to('ROOT')}:5:", "expected 3"]),
])
def test_cli_bad_input(cli, case: str, needles: list[str]) -> None:
    code, err, run_dir = cli[case]
    assert_clean(err, code, run_dir, *needles)


@pytest.mark.parametrize(("case", "needles"), [
    ("unknown_task_group", ["task=foo is not a config of the task group", "xnli", "hydra.searchpath"]),
    ("unknown_key", ["data.batchsize is not a config key", "did you mean data.batch_size?", "+data.batchsize=4"]),
    ("malformed_override", ["cannot parse the override 'data.languages=[en,de'", "override_grammar"]),
])
def test_cli_hydra_errors_are_one_line(cli, case: str, needles: list[str]) -> None:
    """What Hydra refuses while composing (unknown group option or key, malformed override): one ``error:``
    line (sdq.cli.run_hydra), exit 2, no run dir."""
    code, err, run_dir = cli[case]
    assert_clean(err, code, run_dir, *needles)
    assert err.strip().count("\n") == 0 and not run_dir.exists(), err
