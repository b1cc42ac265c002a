"""The LightningModule where teacher, student, losses and metrics meet.

A frozen full-precision **teacher** (eval mode, no grad, out of the optimizer, bf16 on GPU) and a
trained **student** (FP for `method=fp`, fake-quantized for qat/qat_kd/sdq/...). Validation and
test run one dataloader per language (zero-shot cross-lingual) and log
``{stage}/{task}/{lang}/{metric}``, the average ``{stage}/{task}/avg/{metric}`` and, with a teacher,
fidelity (``agree``: same prediction share in percent, ``kl``: mean KL(teacher ‖ student)).

>>> module = SDQModule(student, teacher, DistillLoss(ce=1, logits_kl=1, attn_out=1), task_info,
...                    val_languages=["en", "de"], test_languages=["en", "de"], lr=2e-5)
>>> pl.Trainer(max_epochs=1).fit(module, datamodule=dm)
"""

from __future__ import annotations

import hashlib
import math
import warnings
from dataclasses import dataclass

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.warnings import PossibleUserWarning
from torch import nn

from sdq.distill import DistillLoss, capture, layer_errors
from sdq.errors import SdqError
from sdq.lit.evaluation import LanguageAccumulator, aggregate, gather_accumulators
from sdq.lit.optim import build_optimizer
from sdq.lit.restore import state_mismatch
from sdq.lit.teacher_cache import TeacherLogitsCache

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass(frozen=True)
class TaskInfo:
    """What the module needs to know about the task (kept apart from the data room)."""

    name: str
    head: str  # seq_cls | token_cls | rank
    metric: str  # acc | f1 | ndcg
    label_names: tuple[str, ...]


def weights_digest(model: nn.Module) -> str:
    """Cheap identity of a model's weights (per-tensor float64 sum and sum of squares, hashed)."""
    h = hashlib.sha1()
    with torch.no_grad():
        for name, t in model.state_dict().items():
            t = t.detach().double()
            h.update(f"{name}{tuple(t.shape)}{t.sum().item()!r}{t.square().sum().item()!r}".encode())
    return h.hexdigest()[:16]


class SDQModule(pl.LightningModule):
    """Teacher–student training and per-language evaluation (see module docstring)."""

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        loss: DistillLoss,
        task: TaskInfo,
        val_languages: list[str],
        test_languages: list[str],
        lr: float = 2e-5,
        weight_decay: float = 0.01,
        warmup_ratio: float = 0.1,
        freeze_embeddings: bool = False,
        teacher_bf16: bool = True,
        diag_batch: dict[str, torch.Tensor] | None = None,
        fingerprint: dict | None = None,
        run_config: dict | None = None,
        teacher_ckpt: str | None = None,
    ) -> None:
        super().__init__()
        self.student = student.train()  # from_pretrained leaves eval mode; Lightning keeps module modes
        self.teacher = teacher
        if teacher is not None:
            teacher.eval()
            teacher.requires_grad_(False)
        self.loss = loss
        self.task = task
        self.val_languages, self.test_languages = list(val_languages), list(test_languages)
        self.lr, self.weight_decay, self.warmup_ratio = lr, weight_decay, warmup_ratio
        self.teacher_bf16 = teacher_bf16
        self.diag_batch = diag_batch
        self.fingerprint = fingerprint or {}
        self.run_config = run_config
        self.teacher_ckpt = teacher_ckpt
        if freeze_embeddings:
            self.student.get_input_embeddings().requires_grad_(False)
        self.results: dict[str, dict[str, dict[str, float]]] = {}
        self.layer_error_history: list[dict] = []
        self._acc: dict[str, LanguageAccumulator] = {}
        self._teacher_cache = TeacherLogitsCache.beside(teacher_ckpt)
        self.teacher_digest = weights_digest(teacher) if teacher is not None else None  # fp32, before any cast

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, *args, **kwargs):
        """Not the way back from an sdq checkpoint: the student is rebuilt from the run config the checkpoint
        stores. Use ``sdq.load_student(path)`` (the trained student in eval mode) or ``eval_xglue.py``."""
        raise SdqError(
            f"SDQModule.load_from_checkpoint({str(checkpoint_path)!r}) is not supported: load the trained student "
            "with sdq.load_student(path) (rebuilds it from the run config stored in the checkpoint), or evaluate "
            "it with `python eval_xglue.py ckpt=<path>`"
        )

    # ------------------------------------------------------------------ setup
    def train(self, mode: bool = True) -> SDQModule:
        """Keep the teacher in eval mode whatever Lightning asks of the module."""
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def _maybe_bf16_teacher(self) -> None:
        if self.teacher is not None and self.teacher_bf16 and self.device.type == "cuda":
            self.teacher.to(torch.bfloat16)

    def on_fit_start(self) -> None:
        self._maybe_bf16_teacher()
        if self.teacher is not None:  # in eval mode by design: mute Lightning's notice for exactly its
            n = sum(1 for _ in self.teacher.modules())  # modules; a student module in eval mode still warns
            warnings.filterwarnings(
                "ignore", message=rf"Found {n} module\(s\) in eval mode at the start of training",
                category=PossibleUserWarning,
            )

    def on_test_start(self) -> None:
        self._maybe_bf16_teacher()

    def configure_optimizers(self):
        return build_optimizer(
            self.student, self.lr, self.weight_decay, self.warmup_ratio, self.trainer.estimated_stepping_batches
        )

    # --------------------------------------------------------------- training
    @staticmethod
    def _inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: batch[k] for k in MODEL_INPUTS if k in batch}

    @property
    def needs_teacher(self) -> bool:
        """True when a loss part compares with the teacher (logits KL, attention outputs, ...)."""
        return self.teacher is not None and any(
            self.loss.weights.get(k, 0) > 0 for k in ("logits_kl", "attn_out", "attn_prob", "hidden")
        )

    def _teacher_forward(self, inputs: dict[str, torch.Tensor], **flags):
        with torch.no_grad(), capture(self.teacher, **flags, detach_outputs=True) as cap:
            cap.logits = self.teacher(**inputs).logits.float()
        return cap

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        inputs, flags = self._inputs(batch), self.loss.capture_kwargs
        with capture(self.student, **flags) as s_cap:
            s_cap.logits = self.student(**inputs).logits
        t_cap = self._teacher_forward(inputs, **flags) if self.needs_teacher else None
        total, parts = self.loss(s_cap, t_cap, batch["labels"], batch["attention_mask"])
        if not self._all_finite(total):
            raise SdqError(
                f"loss is {total.item()} at global step {self.global_step} (parts: "
                f"{ {k: round(float(v), 4) for k, v in parts.items()} }); {self._last_checkpoint_note()}: "
                "lower the learning rate (method.lr=...) or raise the bits"
            )
        bs = batch["input_ids"].shape[0]
        self.log("train/loss", total, prog_bar=True, batch_size=bs)
        for name, value in parts.items():
            self.log(f"train/{name}", value, batch_size=bs)
        return total

    def _last_checkpoint_note(self) -> str:
        callbacks = self.trainer.checkpoint_callbacks if self._trainer is not None else []
        paths = [cb.last_model_path for cb in callbacks if getattr(cb, "last_model_path", "")]
        return f"the last checkpoint before it is kept ({paths[-1]})" if paths else "no checkpoint was written yet"

    def _all_finite(self, loss: torch.Tensor) -> bool:
        """Finite on every rank (DDP: all ranks stop together, none waits in an all-reduce)."""
        bad = (~torch.isfinite(loss.detach())).float()
        if self._trainer is not None and self.trainer.world_size > 1:
            bad = self.trainer.strategy.reduce(bad, reduce_op="sum")
        return not bool(bad)

    # ------------------------------------------------------------- evaluation
    def _languages(self, stage: str) -> list[str]:
        return self.val_languages if stage == "val" else self.test_languages

    def _eval_step(self, stage: str, batch: dict[str, torch.Tensor], batch_idx: int, dl_idx: int) -> None:
        lang = self._languages(stage)[dl_idx]
        inputs = self._inputs(batch)
        logits = self.student(**inputs).logits
        t_logits = None
        if self.teacher is not None:  # frozen: its logits never change (cached on disk, see teacher_cache)
            dtype = next(self.teacher.parameters()).dtype
            key = self._teacher_cache.key(inputs, self.device.type, dtype)
            t_logits = self._teacher_cache.get(key)
            if t_logits is None:
                t_logits = self._teacher_forward(inputs, attn_out=False).logits
                self._teacher_cache.put(key, t_logits)
            t_logits = t_logits.to(logits.device)
        acc = self._acc.setdefault(f"{stage}/{lang}", LanguageAccumulator(self.task.head))
        group = batch.get("group") if self.task.head == "rank" else None
        acc.add(logits, batch["labels"], group=group, teacher_logits=t_logits)

    def validation_step(self, batch, batch_idx, dataloader_idx: int = 0) -> None:
        self._eval_step("val", batch, batch_idx, dataloader_idx)

    def test_step(self, batch, batch_idx, dataloader_idx: int = 0) -> None:
        self._eval_step("test", batch, batch_idx, dataloader_idx)

    def _eval_epoch_end(self, stage: str) -> None:
        accs = {lang: self._acc.pop(f"{stage}/{lang}", None) for lang in self._languages(stage)}
        if self.trainer.world_size > 1:  # DDP: each rank saw a shard of every language
            accs = gather_accumulators(accs, self.task.head)
        per_lang = {}
        for lang in self._languages(stage):
            acc = accs.get(lang)
            if acc is not None:
                per_lang[lang] = acc.summary(self.task.metric, self.task.label_names)
        if self.trainer.is_global_zero:
            self._teacher_cache.save()
        if not per_lang:
            return
        per_lang["avg"] = aggregate(per_lang)
        self.results[stage] = per_lang
        base = f"{stage}/{self.task.name}"
        for lang, values in per_lang.items():
            for key, value in values.items():
                if key == "n":
                    continue
                name = self.task.metric if key == "metric" else key
                self.log(f"{base}/{lang}/{name}", float(value), add_dataloader_idx=False, sync_dist=True)
        if stage == "val":
            self._log_layer_errors()

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def _log_layer_errors(self) -> None:
        """Accumulated quantization error per layer on a fixed validation batch."""
        if self.teacher is None or self.diag_batch is None or self.trainer.sanity_checking:
            return
        batch = {k: v.to(self.device) for k, v in self.diag_batch.items()}
        errors = layer_errors(self.student, self.teacher, self._inputs(batch))
        self.layer_error_history.append({"epoch": self.current_epoch, **errors})
        for kind, values in errors.items():
            for layer, value in enumerate(values):
                if math.isfinite(value):
                    self.log(f"diag/{kind}/layer{layer:02d}", float(value), add_dataloader_idx=False, sync_dist=True)

    # ------------------------------------------------------------- checkpoint
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # The frozen teacher is not saved again: it is rebuilt from ``teacher_ckpt`` (its path is kept
        # so a resumed or evaluated run can tell the teacher changed). Halves checkpoint size.
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith("teacher.")]:
            del state[key]
        bad = next((k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
        if bad is not None:  # never replace the last good checkpoint with a broken one
            raise SdqError(
                f"non-finite values in {bad} at global step {self.global_step}: checkpoint not written, the "
                "last good one is kept in the run's checkpoints/ dir; lower the learning rate (method.lr=...)"
            )
        checkpoint["sdq"] = {
            "teacher_ckpt": self.teacher_ckpt,
            "teacher_digest": self.teacher_digest,
            "fingerprint": self.fingerprint,
            "config": self.run_config,
            "layer_errors": self.layer_error_history,
        }

    def check_checkpoint(self, checkpoint: dict, where: str = "checkpoint") -> None:
        """Raise one clear SdqError when ``checkpoint`` was written for another run config or model."""
        saved = (checkpoint.get("sdq") or {}).get("fingerprint")
        if saved is not None and self.fingerprint and saved != self.fingerprint:
            diff = sorted(k for k in set(saved) | set(self.fingerprint) if saved.get(k) != self.fingerprint.get(k))
            raise SdqError(
                f"{where} was written for a different run config (differs in: {', '.join(diff)}); "
                "resume with the same model/task/method/quant settings or start a new run directory"
            )
        digest = (checkpoint.get("sdq") or {}).get("teacher_digest")
        if digest and self.teacher_digest and digest != self.teacher_digest:
            saved_path = (checkpoint.get("sdq") or {}).get("teacher_ckpt")
            raise SdqError(
                f"{where} was trained against another FP teacher ({saved_path}) than this run's "
                f"({self.teacher_ckpt}); resume with teacher.ckpt=<that teacher> or start a new run directory"
            )
        own = {k: v for k, v in self.state_dict().items() if not k.startswith("teacher.")}
        state = {k: v for k, v in checkpoint.get("state_dict", {}).items() if not k.startswith("teacher.")}
        missing, unexpected, shape = state_mismatch(own, state)
        if missing or unexpected or shape:
            example = (shape or missing or unexpected)[0]
            raise SdqError(
                f"{where} does not fit this model ({len(missing)} missing, {len(unexpected)} unexpected, "
                f"{len(shape)} mis-shaped keys, e.g. {example!r}): it comes from another model/task/quant config; "
                "pass the matching settings or start a new run directory"
            )

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.check_checkpoint(checkpoint)
        if self.teacher is not None:  # re-insert the (unchanged, frozen) teacher for strict loading
            checkpoint["state_dict"].update({f"teacher.{k}": v for k, v in self.teacher.state_dict().items()})
        self.layer_error_history = checkpoint.get("sdq", {}).get("layer_errors", [])
