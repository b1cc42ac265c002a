"""Same seed and config on CPU -> the same metrics and bit-identical weights and quantizer state."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from sdq.data.synthetic import write_fixture
from sdq.teacher import save_weights

CONF = Path(__file__).resolve().parents[1] / "conf"


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path]:
    from sdq.models import build_model, resolve_backbone

    tmp = tmp_path_factory.mktemp("determinism")
    root = write_fixture(tmp / "xglue", tasks=["xnli"], n=12)
    torch.manual_seed(0)
    teacher = build_model(resolve_backbone("tiny"), "seq_cls", 3)
    return root, save_weights(teacher, tmp / "teacher.safetensors")


def train(run_dir: Path, root: Path, teacher: Path, seed: int) -> tuple[dict, dict[str, torch.Tensor]]:
    from sdq.pipeline import run

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            "model=tiny", "task=xnli", "method=sdq", f"data.root={root}", f"teacher.ckpt={teacher}",
            "logger=none", "data.batch_size=4", "data.eval_batch_size=8", "method.epochs=1", "method.lr=1e-3",
            "checkpoint.every_n_train_steps=0", "trainer.enable_progress_bar=false", f"seed={seed}",
        ])
    results = run(cfg, run_dir=run_dir)
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    return results, {k: v for k, v in ckpt["state_dict"].items() if k.startswith("student.")}


def test_same_seed_same_config_same_results(tmp_path: Path, setup) -> None:
    root, teacher = setup
    ra, sa = train(tmp_path / "a", root, teacher, seed=42)
    rb, sb = train(tmp_path / "b", root, teacher, seed=42)
    for key in ("xnli", "teacher", "fidelity", "layer_errors"):
        assert ra[key] == rb[key], key
    assert sa.keys() == sb.keys() and any("act_quantizer" in k for k in sa)
    assert [k for k in sa if not torch.equal(sa[k], sb[k])] == []
    # not vacuous: training (with dropout, i.e. the seeded RNG) moved the student away from the teacher
    from safetensors.torch import load_file

    start = load_file(str(teacher))
    assert not torch.equal(sa["student.roberta.encoder.layer.0.output.dense.weight"],
                           start["roberta.encoder.layer.0.output.dense.weight"])
