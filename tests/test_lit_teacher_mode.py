"""The frozen teacher stays in eval mode through fit without Lightning's eval-mode notice; a student
module left in eval mode still gets it."""

from __future__ import annotations

import copy
import warnings

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from sdq.distill import DistillLoss
from sdq.lit.module import SDQModule, TaskInfo
from tests import tiny


def _batches(n: int = 2) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    data = [{"input_ids": torch.randint(5, 120, (4, 9), generator=g),
             "attention_mask": torch.ones(4, 9, dtype=torch.long),
             "labels": torch.randint(0, 3, (4,), generator=g)} for _ in range(n)]
    return DataLoader(data, batch_size=None)


def _fit_notices(student_eval: bool) -> tuple[list[str], SDQModule]:
    teacher = tiny.xlmr()
    student = copy.deepcopy(teacher)
    info = TaskInfo("xnli", "seq_cls", "acc", ("a", "b", "c"))
    module = SDQModule(student, teacher, DistillLoss(ce=1.0, logits_kl=1.0), info, ["en"], ["en"], lr=1e-3)
    if student_eval:
        module.student.classifier.eval()  # a mistake the notice exists for
    trainer = pl.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0, accelerator="cpu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(module, train_dataloaders=_batches())
    notices = [str(w.message) for w in caught if "in eval mode at the start of training" in str(w.message)]
    return notices, module


def test_teacher_eval_mode_is_silent_student_eval_mode_warns() -> None:
    quiet, module = _fit_notices(student_eval=False)
    assert quiet == []
    assert not module.teacher.training and all(not m.training for m in module.teacher.modules())
    assert module.student.training
    loud, _ = _fit_notices(student_eval=True)
    n_teacher = sum(1 for _ in module.teacher.modules())
    n_head = sum(1 for _ in module.student.classifier.modules())
    assert len(loud) == 1 and loud[0].startswith(f"Found {n_teacher + n_head} module(s) in eval mode")
