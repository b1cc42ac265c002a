"""The students of ``peers_qat.py``: how each tool (torchao, NVIDIA ModelOpt, sdq) turns a copy of the FP teacher
into a quantization-aware student, the loss of one training step, and what its own save path writes.

>>> row = next(r for r in ROWS if r.name == "torchao qat" and r.bits == "W4A8")
>>> student = row.build(bench)                   # fake-quantized copy of bench.teacher
>>> loss = student.loss(batch); model, nbytes = student.finish()
"""

from __future__ import annotations

import copy
import io
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]


def file_bytes(state: dict) -> int:
    """Bytes of ``torch.save(state)``: the file a plain PyTorch save writes."""
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.tell()


class SkipRow(Exception):
    """A row that does not apply to this bench (the reason is printed)."""


@dataclass
class Student:
    """A student being trained: ``loss(batch)`` of one step over ``trained``'s parameters (default: ``model``);
    ``finish()`` -> (the model to evaluate, bytes of the tool's saved model); ``batches``: its own training
    batches (None: the shared labelled ones)."""

    model: nn.Module
    loss: Callable[[dict], torch.Tensor]
    finish: Callable[[], tuple[nn.Module, int]] | None = None
    trained: nn.Module | None = None
    batches: list[dict] | None = None

    def __post_init__(self) -> None:
        self.trained = self.trained if self.trained is not None else self.model
        self.finish = self.finish or (lambda: (self.model, file_bytes(self.model.state_dict())))


@dataclass
class Bench:
    """What every row shares: the teacher, batches, recipe and test set (teacher logits computed once)."""

    compose: Callable[[list[str]], object]  # extra overrides -> the composed config of this bench
    dm: object
    tokenizer: object
    teacher: nn.Module
    batches: list[dict]
    lr: float
    weight_decay: float
    warmup: float
    freeze_embeddings: bool
    calib: list[dict]
    test: dict[str, list[dict]]
    teacher_logits: dict[str, list[torch.Tensor]]
    teacher_per_lang: dict[str, dict[str, float]]
    head: str
    metric: str
    task_info: object
    _mixed: list[dict] | None = field(default=None, repr=False)

    @classmethod
    def build(cls, compose, dm, tokenizer, teacher, batches, lr, weight_decay, warmup, freeze_embeddings) -> Bench:
        from sdq.calib import calibration_batches
        from sdq.calib.calibrate import INPUT_KEYS
        from sdq.lit.evaluation import LanguageAccumulator
        from sdq.lit.module import TaskInfo

        cfg = compose([])
        spec = dm.spec
        calib = calibration_batches(dm.train_dataloader(), int(cfg.method.calibrate_batches), tokenizer,
                                    int(cfg.method.calibrate_multilingual or 0), int(cfg.data.batch_size))
        test = {lang: list(loader) for lang, loader in zip(dm.test_languages, dm.test_dataloader())}
        t_logits, t_per_lang = {}, {}
        with torch.no_grad():
            for lang, bs in test.items():
                t_logits[lang] = [teacher(**{k: v for k, v in b.items() if k in INPUT_KEYS}).logits for b in bs]
                acc = LanguageAccumulator(dm.head)
                for b, lg in zip(bs, t_logits[lang]):
                    acc.add(lg, b["labels"])
                t_per_lang[lang] = acc.summary(spec.metric)
        return cls(compose, dm, tokenizer, teacher, batches, lr, weight_decay, warmup, freeze_embeddings, calib,
                   test, t_logits, t_per_lang, dm.head, spec.metric,
                   TaskInfo(spec.name, spec.kind, spec.metric, tuple(spec.labels)))

    @property
    def teacher_eval(self) -> dict[str, float]:
        from sdq.lit.evaluation import aggregate

        return aggregate(self.teacher_per_lang)

    def copy_teacher(self) -> nn.Module:
        """A trainable copy of the teacher as every row starts: no dropout, word embeddings frozen per recipe."""
        from sdq.models import set_dropout

        model = copy.deepcopy(self.teacher)
        set_dropout(model, 0.0)
        model.requires_grad_(True)
        if self.freeze_embeddings:
            model.get_input_embeddings().requires_grad_(False)
        return model

    def mixed_batches(self) -> list[dict] | None:
        """The same labelled batches, each with ``ratio x batch`` unlabeled rows of conf/unlabeled/<task>.yaml
        (None when the task has no unlabeled config)."""
        from sdq.data.unlabeled import UnlabeledSpec
        from sdq.lit.stage import per_step, unlabeled_pool

        name = self.dm.spec.name
        if self._mixed is None and (REPO / "conf" / "unlabeled" / f"{name}.yaml").is_file():
            cfg = self.compose([f"unlabeled={name}", "unlabeled.ratio=2"])
            spec = UnlabeledSpec.from_config(dict(cfg.unlabeled))
            self.dm.set_unlabeled(unlabeled_pool(spec, self.dm, True), per_step(spec, int(cfg.data.batch_size)))
            self._mixed = training_batches(self.dm, len(self.batches))
            self.dm.set_unlabeled(None)
        return self._mixed


def training_batches(dm, steps: int) -> list[dict]:
    """The first ``steps`` batches of train.py's seeded epochs (epoch e: order randperm(n, seed + e))."""
    out, epoch = [], 0
    while len(out) < steps:
        loader = dm.train_dataloader()
        sampler = getattr(loader.batch_sampler, "sampler", loader.sampler)  # MixedBatchSampler wraps it
        sampler.set_epoch(epoch)
        out.extend(b for _, b in zip(range(steps - len(out)), loader))
        epoch += 1
    return out


def ce_loss(model: nn.Module) -> Callable[[dict], torch.Tensor]:
    """Task cross-entropy of ``model`` on a batch (label -100 ignored)."""
    from sdq.calib.calibrate import INPUT_KEYS
    from sdq.distill.losses import task_loss

    return lambda b: task_loss(model(**{k: v for k, v in b.items() if k in INPUT_KEYS}).logits, b["labels"])


def not_head(module: nn.Module, fqn: str) -> bool:
    """Every Linear except the classifier head (kept FP by every row, as sdq's presets skip 'classifier')."""
    return isinstance(module, nn.Linear) and not fqn.startswith("classifier")


# ------------------------------------------------------------------------------------------------ sdq
def sdq_student(method: str, quant: str, extra: tuple[str, ...] = (), unlabeled: bool = False):
    """sdq's ``method`` at ``quant`` exactly as train.py builds it: prepare, calibrate (task + multilingual
    pseudo batches), SDQModule.training_step; size = the packed export (``sdq.export``)."""

    def build(b: Bench) -> Student:
        import hydra

        from sdq.calib import calibrate
        from sdq.config import quant_dict
        from sdq.export.writer import WEIGHTS_FILE, export_quantized
        from sdq.lit.module import SDQModule
        from sdq.quant import QuantConfig, prepare

        cfg = b.compose([f"method={method}", f"quant={quant}", *extra])
        student = b.copy_teacher()
        prepare(student, QuantConfig.from_dict(quant_dict(cfg)))
        calibrate(student, b.calib, len(b.calib), learn=True)
        module = SDQModule(student, b.teacher, hydra.utils.instantiate(cfg.method.loss), b.task_info, [], [],
                           freeze_embeddings=b.freeze_embeddings)
        module.log = lambda *a, **k: None  # no Trainer

        def finish() -> tuple[nn.Module, int]:
            with tempfile.TemporaryDirectory() as tmp:
                report = export_quantized(student, Path(tmp) / "export", onnx=False, hf_copy=False)
            return student, report.files[WEIGHTS_FILE]

        mixed = b.mixed_batches() if unlabeled else None
        if unlabeled and mixed is None:
            raise SkipRow(f"no conf/unlabeled/{b.dm.spec.name}.yaml")
        return Student(student, lambda batch: module.training_step(batch, 0), finish, batches=mixed)

    return build


# -------------------------------------------------------------------------------------------- torchao
def torchao_student(weight_bits: int, group: int | None):
    """torchao QAT as its docs recommend: QATConfig(Int8DynamicActivationIntxWeightConfig) prepare -> CE ->
    convert; per-token dynamic asymmetric int8 activations, symmetric intN weights per channel or group;
    Linear layers only (embeddings stay FP). Size: torch.save of the converted model.

    Its weights' SYMMETRIC mapping takes scale = amax / 7.5 at 4 bits: the largest positive weight of each
    group rounds to 8 and is clipped to 7. torchao 0.18's QAT accepts no other weight mapping
    (SYMMETRIC_NO_CLIPPING_ERR: "not supported"); see docs/peers.md for what that costs at group 32."""

    def build(b: Bench) -> Student:
        from torchao.quantization import Int8DynamicActivationIntxWeightConfig, PerAxis, PerGroup, quantize_
        from torchao.quantization.qat import QATConfig

        base = Int8DynamicActivationIntxWeightConfig(
            weight_dtype=getattr(torch, f"int{weight_bits}"),
            weight_granularity=PerGroup(group) if group else PerAxis(0))
        model = b.copy_teacher()
        quantize_(model, QATConfig(base, step="prepare"), filter_fn=not_head)

        def finish() -> tuple[nn.Module, int]:
            quantize_(model, QATConfig(base, step="convert"), filter_fn=not_head)
            return model, file_bytes(model.state_dict())

        return Student(model, ce_loss(model), finish)

    return build


# ------------------------------------------------------------------------------------------- modelopt
def modelopt_student(preset: str, distill: bool):
    """NVIDIA ModelOpt: ``mtq.quantize(model, <preset>, forward_loop)`` over the calibration batches every
    row gets, then QAT (CE) or QAD (``modelopt.torch.distill``: LogitsDistillationLoss on the classifier's
    logits, tau 1; its per-layer MGDLoss is for B x C x H x W feature maps and fails on an encoder's
    B x T x H). The classifier head (as every row) and LayerNorm inputs (no other row quantizes them) stay
    FP. Size: ``mto.save`` of the ``mtq.compress``-ed copy (real int8 / int4 weights); the fake-quantized
    model is what is evaluated (compress re-derives the weight scales)."""

    def build(b: Bench) -> Student:
        import modelopt.torch.distill as mtd
        import modelopt.torch.opt as mto
        import modelopt.torch.quantization as mtq

        from sdq.calib.calibrate import INPUT_KEYS

        cfg = copy.deepcopy(getattr(mtq, preset))
        cfg["quant_cfg"] = list(cfg["quant_cfg"]) + [{"quantizer_name": "*classifier*", "enable": False},
                                                     {"quantizer_name": "*LayerNorm*", "enable": False}]

        def forward_loop(m: nn.Module) -> None:
            for batch in b.calib:
                m(**{k: v for k, v in batch.items() if k in INPUT_KEYS})

        model = mtq.quantize(b.copy_teacher(), cfg, forward_loop)
        trained = model
        loss = ce_loss(model)
        if distill:
            trained = mtd.convert(model, mode=[("kd_loss", {
                "teacher_model": b.teacher,
                "criterion": {("classifier", "classifier"): mtd.LogitsDistillationLoss(1.0, "batchmean")}})])

            def loss(batch: dict) -> torch.Tensor:
                trained(**{k: v for k, v in batch.items() if k in INPUT_KEYS})
                return trained.compute_kd_loss()

        def finish() -> tuple[nn.Module, int]:
            student = mtd.export(trained) if distill else model
            packed = copy.deepcopy(student)
            mtq.compress(packed)
            with tempfile.TemporaryDirectory() as tmp:
                mto.save(packed, Path(tmp) / "modelopt.pth")
                return student, (Path(tmp) / "modelopt.pth").stat().st_size

        return Student(model, loss, finish, trained=trained)

    return build


@dataclass(frozen=True)
class Row:
    name: str
    bits: str
    scheme: str
    build: Callable[[Bench], Student]


_SDQ = "static per-channel acts, per-channel W, W+emb quantized"
ROWS: list[Row] = [
    Row("torchao qat", "W8A8", "per-token dynamic acts, per-channel W, emb FP", torchao_student(8, None)),
    Row("modelopt qat", "W8A8", "INT8_DEFAULT: static per-tensor acts, per-channel W, emb FP",
        modelopt_student("INT8_DEFAULT_CFG", distill=False)),
    Row("modelopt qad", "W8A8", "INT8_DEFAULT: static per-tensor acts, per-channel W, emb FP",
        modelopt_student("INT8_DEFAULT_CFG", distill=True)),
    Row("sdq qat", "W8A8", _SDQ, sdq_student("qat", "w8a8")),
    Row("sdq qat_kd", "W8A8", _SDQ, sdq_student("qat_kd", "w8a8")),
    Row("sdq", "W8A8", _SDQ, sdq_student("sdq", "w8a8")),
    Row("torchao qat", "W4A8", "per-token dynamic acts, per-channel W, emb FP", torchao_student(4, None)),
    Row("torchao qat g32", "W4A8", "per-token dynamic acts, group-32 W, emb FP", torchao_student(4, 32)),
    Row("modelopt qat", "W4A8", "W4A8_AWQ_BETA: static fp8 acts, int4 W block 128 (AWQ), emb FP",
        modelopt_student("W4A8_AWQ_BETA_CFG", distill=False)),
    Row("modelopt qad", "W4A8", "W4A8_AWQ_BETA: static fp8 acts, int4 W block 128 (AWQ), emb FP",
        modelopt_student("W4A8_AWQ_BETA_CFG", distill=True)),
    Row("sdq qat", "W4A8", _SDQ, sdq_student("qat", "w4a8")),
    Row("sdq qat_kd", "W4A8", _SDQ, sdq_student("qat_kd", "w4a8")),
    Row("sdq", "W4A8", _SDQ, sdq_student("sdq", "w4a8")),
    Row("sdq g32", "W4A8", "static per-channel acts, group-32 W, emb FP",
        sdq_student("sdq", "w4a8", ("quant.weight.granularity=group", "+quant.weight.group_size=32",
                                    "quant.embedding=null"))),
    Row("sdq +unlabeled", "W4A8", _SDQ + ", + unlabeled pairs (ratio 2)",
        sdq_student("sdq", "w4a8", unlabeled=True)),
]
