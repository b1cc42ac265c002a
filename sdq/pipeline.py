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

from sdq.calib import (
    calibrate,
    calibration_batches,
    correct_bias,
    frequencies_for_run,
    gptq,
    gptq_teacher,
    prepare_datafree,
)
from sdq.calib.gptq import targets
from sdq.config import fingerprint, plain_config, quant_dict, resolve_config
from sdq.data.task_config import task_from_config
from sdq.lit.logger import finish_logger
from sdq.lit.quiet import quiet_lightning
from sdq.lit.settings import RunSettings
from sdq.lit.stage import calibration_sample, datamodule, fit_and_test, make_module, per_step, unlabeled_pool
from sdq.models import build_model, load_tokenizer, resolve_backbone, set_dropout
from sdq.models.hf_teacher import (
    hf_model_name,
    hf_model_ref,
    hf_teacher_config,
    hf_teacher_tokenizer,
    load_hf_teacher,
)
from sdq.quant import QuantConfig, prepare, quant_report
from sdq.quant.token_bits import assign_token_bits
from sdq.report.wandb_log import log_results
from sdq.results import build_results, print_table, write_results
from sdq.teacher import finetune_teacher, load_weights, obtain_teacher

log = logging.getLogger(__name__)


def run(cfg: DictConfig, run_dir: Path | None = None) -> dict:
    """Run one configured job end to end; returns the results dict also written to results.json."""
    quiet_lightning()
    cfg = resolve_config(cfg)
    settings = RunSettings.from_config(cfg)  # everything below the pipeline reads these, not cfg
    if run_dir is None:
        run_dir = Path(hydra.core.hydra_config.HydraConfig.get().runtime.output_dir)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(cfg.seed, workers=True)
    spec = task_from_config(cfg.task)  # labels may be read from the data: dm.spec below
    method = cfg.method
    hf_ref = hf_model_ref(settings.teacher.ckpt) if method.use_teacher or method.quantize else None
    if hf_ref:  # a fine-tuned HF classifier: its backbone, head, tokenizer, labels and name (checked first)
        hf_config = hf_teacher_config(hf_ref, spec.kind, spec.name)
        with open_dict(cfg):
            cfg.model.name, cfg.model.name_or_path = hf_model_name(hf_ref), hf_ref
        backbone, tokenizer = hf_ref, hf_teacher_tokenizer(hf_ref, hf_config)
    else:
        backbone = resolve_backbone(cfg.model.name_or_path)  # offline + not cached -> SdqModelError
        tokenizer = load_tokenizer(backbone)
    tags = {"model": cfg.model.name, "task": spec.name, "method": method.name, "quant": cfg.quant.name,
            "bits": cfg.bits if cfg.bits is not None else cfg.quant.name}
    dm = datamodule(settings.data, tokenizer)  # every split read and checked (fail fast)
    spec = dm.spec
    with open_dict(cfg):
        cfg.task.labels = list(dm.labels)  # the final label list, in every checkpoint's run config
    labels = run_labels(cfg, dm)
    loss = hydra.utils.instantiate(method.loss)
    distills = bool(method.use_teacher and method.train) and any(
        loss.weights.get(k, 0) > 0 for k in ("logits_kl", "attn_out", "attn_prob", "hidden"))
    n_unlabeled = int(method.get("calibrate_unlabeled") or 0) if method.quantize else 0
    pool = unlabeled_pool(settings.unlabeled, dm, distills, calibrates=n_unlabeled > 0)  # checked before stage 1

    teacher = None
    teacher_path = None
    if hf_ref:  # stage 1 skipped: the student starts from the given model
        teacher, teacher_path = load_hf_teacher(hf_ref, hf_config, list(labels["id2label"].values())), hf_ref
    elif method.use_teacher or method.quantize:
        teacher_path = obtain_teacher(settings.teacher, lambda: finetune_teacher(
            backbone, dm, run_dir / "teacher", settings.teacher, settings.lightning, cfg.model.name,
            plain_config(cfg)))
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
        qcfg = QuantConfig.from_dict(quant_dict(cfg))
        if method.get("datafree") is not None:  # no task data: sensitivity-chosen FP modules, data-free ranges
            report = prepare_datafree(student, qcfg, tokenizer, dict(method.datafree), run_dir)
            with open_dict(cfg):
                cfg.quant.skip = list(qcfg.skip)  # checkpoints / fingerprint record the modules kept FP
        else:
            report = prepare(student, qcfg)
        if qcfg.token_bits is not None:  # per-token embedding bits by frequency
            freq = frequencies_for_run(qcfg.token_bits, tokenizer, dm)
            extra = {**report.extra, "token_bits": assign_token_bits(student, qcfg.token_bits, freq)}
            report = quant_report(student)  # bits changed: recount
            report.extra = extra
        log.info("quantization report:\n%s", report)
        n_pseudo = int(method.get("calibrate_multilingual") or 0)
        n_unlabeled = n_unlabeled if pool else 0
        if method.calibrate_batches or n_pseudo or n_unlabeled:
            batches = calibration_batches(dm.train_dataloader(), int(method.calibrate_batches), tokenizer,
                                          n_pseudo, int(settings.data.batch_size))
            batches += calibration_sample(pool or [], n_unlabeled, dm.collate, int(settings.data.batch_size),
                                          int(cfg.seed))
            calibrate(student, batches, len(batches), learn=bool(method.train))
            if method.get("gptq"):
                if method.get("gptq_teacher"):  # layer by layer, towards the teacher's outputs (biases too)
                    n = gptq_teacher(student, teacher, batches, bias=bool(method.get("bias_correction")))
                    log.info("gptq: %d quantized Linear weights re-rounded on %d calibration batches, towards "
                             "the teacher's outputs%s", n, len(batches),
                             ", with their biases" if method.get("bias_correction") else "")
                else:
                    log.info("gptq: %d quantized Linear weights re-rounded on %d calibration batches",
                             gptq(student, batches), len(batches))
            if method.get("bias_correction"):  # after gptq_teacher: the layers it did not fit (k-means, ...)
                fitted = targets(student, warn=False) if method.get("gptq_teacher") else {}  # implies gptq (config)
                if n := correct_bias(student, batches, skip=fitted):
                    log.info("bias correction: %d quantized Linear biases corrected on %d calibration batches",
                             n, len(batches))

    if pool and distills:  # the student stage distils on them too (after calibration: its batches stay labelled)
        dm.set_unlabeled(pool, per_step(settings.unlabeled, settings.data.batch_size))
    module = make_module(student, teacher, loss, dm, settings.student, teacher_bf16=settings.teacher.bf16,
                         layer_errors=settings.layer_errors, fingerprint=fingerprint(cfg),
                         run_config=plain_config(cfg), teacher_ckpt=teacher_path)
    trainer = fit_and_test(module, dm, settings.lightning, run_dir, train=bool(method.train), tags=tags,
                           ckpt_path=settings.lightning.ckpt_path, fidelity=distills)
    if method.quantize and not method.train:  # PTQ: keep the calibrated student (export, eval_xglue)
        trainer.save_checkpoint(run_dir / "checkpoints" / "last.ckpt")

    meta = {**tags, "teacher_ckpt": str(teacher_path) if teacher_path else None, "labels": labels,
            "quant_report": report.to_dict() if report is not None else None, "config": plain_config(cfg)}
    if not trainer.is_global_zero:  # DDP: every rank ran the job, rank 0 writes and prints
        return build_results(spec, module.results, module.layer_error_history, meta)
    results = write_results(run_dir, spec, module.results, module.layer_error_history, meta=meta)
    _log_to_wandb(trainer, results)
    print_table(results, spec)
    return results


def run_labels(cfg: DictConfig, dm) -> dict:
    """``{"id2label": {0: ...}, "label2id": {...: 0}}`` of the data (the models' output order), also written
    into ``cfg.model`` so the student checkpoint's run config carries them (the export's config.json)."""
    names = [str(x) for x in (getattr(dm, "labels", None) or dm.spec.labels)]
    labels = {"id2label": dict(enumerate(names)), "label2id": {name: i for i, name in enumerate(names)}}
    with open_dict(cfg):
        cfg.model.id2label, cfg.model.label2id = labels["id2label"], labels["label2id"]
    return labels


def _log_to_wandb(trainer, results: dict) -> None:
    """With ``logger=wandb``: the per-language table, charts and summary into the run's W&B run."""
    from pytorch_lightning.loggers import WandbLogger

    if trainer.is_global_zero and isinstance(trainer.logger, WandbLogger):
        log_results(results, run=trainer.logger.experiment)
    finish_logger(trainer)
