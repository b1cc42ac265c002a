"""Evaluate a trained checkpoint on every language of its task, with fidelity to a reference.

>>> results = evaluate_checkpoint("outputs/.../checkpoints/best.ckpt", "xnli", "../shared/data/mini-xglue")
>>> results["xnli"]["test"]["avg"], results["fidelity"]["xnli"]["test"]["avg"]["agree"]
"""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
from omegaconf import OmegaConf

from sdq.data.task_config import task_from_config
from sdq.data.tasks import TASKS, get_task
from sdq.distill import DistillLoss, attention_blocks
from sdq.errors import SdqConfigError, SdqModelError
from sdq.lit.module import SDQModule, TaskInfo
from sdq.lit.restore import build_from_config, checkpoint_config, load_student, read_checkpoint
from sdq.lit.stage import build_datamodule
from sdq.models import load_tokenizer, resolve_backbone
from sdq.results import build_results
from sdq.teacher import load_weights


def same_depth(student, teacher) -> bool:
    """Whether the per-layer error can be computed: as many self-attention blocks in both models."""
    try:
        return len(attention_blocks(student)) == len(attention_blocks(teacher))
    except SdqModelError:  # no recognisable blocks: no per-layer diagnostics
        return False


def resolve_ckpt(path: str | Path) -> Path:
    """A .ckpt file, or a run dir (its checkpoints/best.ckpt, else last.ckpt)."""
    path = Path(path)
    if path.is_dir():
        for name in ("best.ckpt", "last.ckpt"):
            if (path / "checkpoints" / name).is_file():
                return path / "checkpoints" / name
    return path


def evaluate_checkpoint(
    ckpt: str,
    task: str,
    data_root: str | None,
    reference: str | None = None,
    languages: list | None = None,
    batch_size: int = 64,
    limit_eval: int | None = None,
) -> dict:
    """Dev + test metrics per language; teacher/fidelity vs ``reference`` (or the run's own teacher), and
    the per-layer error carried against it (``results["layer_errors"]``, on the first dev batch evaluated).

    ``limit_eval``: dev/test examples per language (seeded subsample); None = all of them, whatever the
    training run used. ``results["examples"][task]`` holds the counts evaluated per split and language.
    """
    own = str(task).lower().replace("-", "") not in TASKS  # an own task: its spec is the checkpoint's
    asked = str(task) if own else get_task(task).name
    path = resolve_ckpt(ckpt)
    raw = read_checkpoint(path)
    cfg = checkpoint_config(raw)
    if cfg.task.name != asked:
        raise SdqConfigError(
            f"checkpoint {path} was trained for task {cfg.task.name}, not {asked}: evaluate it with "
            f"task={cfg.task.name}"
        )
    spec = task_from_config(cfg.task)
    student = load_student(path)
    teacher = None
    if reference is not None:
        teacher = load_student(resolve_ckpt(reference))
    elif (raw.get("sdq") or {}).get("teacher_ckpt"):  # the run's own FP teacher
        teacher = build_from_config(cfg, quantize=False)
        load_weights(teacher, raw["sdq"]["teacher_ckpt"])
        teacher.eval()
    del raw
    cfg.data.root = data_root if data_root is not None else cfg.data.root
    cfg.data.eval_batch_size = batch_size
    cfg.data.languages = list(languages) if languages is not None else None
    cfg.data.val_languages = None  # dev in every language evaluated, not the run's selection languages
    if cfg.task.get("val_languages") is not None:
        cfg.task.val_languages = None
    cfg.data.limit_eval = limit_eval
    if cfg.task.get("limit_eval") is not None:  # the task's default (e.g. a subset size) would apply to None
        cfg.task.limit_eval = None
    if languages is not None and not spec.open_languages:  # open (sib200): checked against the data folder
        bad = [lang for lang in languages if lang not in spec.languages]
        if bad:
            raise SdqConfigError(f"languages {bad} not in task {spec.name} ({', '.join(spec.languages)})")
    dm = build_datamodule(cfg, load_tokenizer(resolve_backbone(cfg.model.name_or_path)))
    # the error carried layer by layer against the teacher/reference: the first dev batch of this evaluation
    # (its first language and batch size), when the run asked for diagnostics and both have the same depth
    diag = None
    if teacher is not None and cfg.get("diagnostics", {}).get("layer_errors", True) and same_depth(student, teacher):
        diag = next(iter(dm.val_dataloader()[0]))

    module = SDQModule(
        student, teacher, DistillLoss(ce=1.0), TaskInfo(spec.name, spec.kind, spec.metric, tuple(spec.labels)),
        val_languages=dm.val_languages, test_languages=dm.test_languages, diag_batch=diag,
    )
    trainer = pl.Trainer(accelerator="auto", devices=1, logger=False, enable_checkpointing=False)
    trainer.validate(module, datamodule=dm, verbose=False)
    trainer.test(module, datamodule=dm, verbose=False)
    meta = {"model": cfg.model.name, "task": spec.name, "method": cfg.method.name, "quant": cfg.quant.name,
            "bits": cfg.get("bits") if cfg.get("bits") is not None else cfg.quant.name,
            "ckpt": str(path), "reference": reference, "config": OmegaConf.to_container(cfg, resolve=True)}
    sizes = dm.sizes()
    meta["examples"] = {spec.name: {split: {key.split("/", 1)[1]: n for key, n in sizes.items()
                                            if key.startswith(f"{split}/")} for split in ("dev", "test")}}
    return build_results(spec, module.results, module.layer_error_history, meta)
