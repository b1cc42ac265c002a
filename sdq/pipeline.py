"""One run: (optional) teacher fine-tuning, student preparation, calibration, training, test, results.

``train.py`` calls :func:`run` with the composed Hydra config; everything it does lives here.

>>> results = run(cfg)              # writes <run dir>/results.json
>>> results["xnli"]["test"]["avg"]  # average test metric over languages
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig, open_dict

from sdq.config import fingerprint, plain_config, quant_dict, resolve_config
from sdq.data.tasks import get_task
from sdq.lit.stage import build_datamodule, fit_and_test, make_module
from sdq.models import build_model, load_tokenizer, resolve_backbone, set_dropout
from sdq.results import build_results, print_table, write_results
from sdq.teacher import calibrate, load_weights, obtain_teacher

log = logging.getLogger(__name__)


def run(cfg: DictConfig, run_dir: Path | None = None) -> dict:
    """Run one configured job end to end; returns the results dict also written to results.json."""
    cfg = resolve_config(cfg)
    if run_dir is None:
        run_dir = Path(hydra.core.hydra_config.HydraConfig.get().runtime.output_dir)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(cfg.seed, workers=True)
    spec = get_task(cfg.task.name)
    method = cfg.method
    tags = {"model": cfg.model.name, "task": spec.name, "method": method.name, "quant": cfg.quant.name,
            "bits": cfg.bits if cfg.bits is not None else cfg.quant.name}

    backbone = resolve_backbone(cfg.model.name_or_path)  # offline + not cached -> SdqModelError
    tokenizer = load_tokenizer(backbone)
    dm = build_datamodule(cfg, tokenizer)
    loss = hydra.utils.instantiate(method.loss)

    teacher = None
    teacher_path = None
    if method.use_teacher or method.quantize:
        teacher_path = obtain_teacher(cfg, backbone, dm, run_dir)
        teacher = build_model(backbone, spec.kind, dm.num_labels)
        load_weights(teacher, teacher_path)
    if teacher is not None:
        student = copy.deepcopy(teacher)
    else:
        student = build_model(backbone, spec.kind, dm.num_labels)
    if method.get("student_dropout") is not None:  # e.g. 0: distil without dropout noise in the student
        set_dropout(student, float(method.student_dropout))

    report = None
    if method.quantize:
        from sdq.quant import QuantConfig, prepare, quant_report

        qcfg = QuantConfig.from_dict(quant_dict(cfg))
        if method.get("datafree") is not None:  # no task data: sensitivity-chosen FP modules, data-free ranges
            from sdq.quant.datafree import prepare_datafree

            report = prepare_datafree(student, qcfg, tokenizer, dict(method.datafree), run_dir)
            with open_dict(cfg):
                cfg.quant.skip = list(qcfg.skip)  # checkpoints / fingerprint record the modules kept FP
        else:
            report = prepare(student, qcfg)
        if qcfg.token_bits is not None:  # per-token embedding bits by frequency
            from sdq.quant.token_bits import assign_token_bits, frequencies_for_run

            freq = frequencies_for_run(qcfg.token_bits, tokenizer, dm)
            extra = {**report.extra, "token_bits": assign_token_bits(student, qcfg.token_bits, freq)}
            report = quant_report(student)  # bits changed: recount
            report.extra = extra
        log.info("quantization report:\n%s", report)
        n_pseudo = int(method.get("calibrate_multilingual") or 0)
        if method.calibrate_batches or n_pseudo:
            from sdq.quant.datafree import calibration_batches

            batches = calibration_batches(dm.train_dataloader(), int(method.calibrate_batches), tokenizer,
                                          n_pseudo, int(cfg.data.batch_size))
            calibrate(student, batches, len(batches), learn=bool(method.train))

    epochs = int(method.epochs if method.epochs is not None else cfg.task.epochs)
    lr = float(method.lr if method.lr is not None else cfg.task.lr)
    module = make_module(cfg, student, teacher, loss, dm, lr, fingerprint(cfg), teacher_path)
    trainer = fit_and_test(cfg, module, dm, run_dir, epochs, bool(method.train), tags, ckpt_path=cfg.get("ckpt_path"))
    if method.quantize and not method.train:  # PTQ: keep the calibrated student (export, eval_xglue)
        trainer.save_checkpoint(run_dir / "checkpoints" / "last.ckpt")

    meta = {**tags, "teacher_ckpt": str(teacher_path) if teacher_path else None,
            "quant_report": report.to_dict() if report is not None else None, "config": plain_config(cfg)}
    if not trainer.is_global_zero:  # DDP: every rank ran the job, rank 0 writes and prints
        return build_results(spec, module.results, module.layer_error_history, meta)
    results = write_results(run_dir, spec, module.results, module.layer_error_history, meta=meta)
    _log_to_wandb(trainer, results)
    print_table(results, spec)
    return results


def _log_to_wandb(trainer, results: dict) -> None:
    """With ``logger=wandb``: the per-language table, charts and summary into the run's W&B run."""
    from pytorch_lightning.loggers import WandbLogger

    from sdq.lit.builders import finish_logger

    if trainer.is_global_zero and isinstance(trainer.logger, WandbLogger):
        from sdq.report.wandb_log import log_results

        log_results(results, run=trainer.logger.experiment)
    finish_logger(trainer)
