"""A fine-tuned Hugging Face classifier as the FP teacher: ``teacher.ckpt=<save_pretrained dir | hub id>``.

The dir (or hub id) of an ``AutoModelForSequenceClassification`` / ``AutoModelForTokenClassification``
brings its backbone, head, tokenizer and ``id2label``; stage 1 is skipped. Everything is checked before
any training: the config loads, the head fits the task kind, the labels equal the data's (same set in
another order: the head's rows are reordered to the data's order), the weights load completely.

>>> ref = hf_model_ref("/models/my-xnli")              # the dir; None for a .ckpt / .safetensors file
>>> model_tag("me5_small", "/models/my-xnli")           # 'my-xnli' (results.json model, run-dir tag)
>>> config = hf_teacher_config(ref, "seq_cls")          # config.json read, head kind checked
>>> tok = hf_teacher_tokenizer(ref, config)
>>> model = load_hf_teacher(ref, config, ["contradiction", "entailment", "neutral"])
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from sdq.errors import SdqModelError
from sdq.models.backbone import _looks_like_path, load_tokenizer
from sdq.models.hub import hf_cache_dir, hub_load_kwargs

WEIGHT_SUFFIXES = (".ckpt", ".safetensors", ".pt", ".pth", ".bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "sentencepiece.bpe.model", "spiece.model",
                   "tokenizer.model", "vocab.txt", "vocab.json")
HEAD_CLASSES = {"seq_cls": "ForSequenceClassification", "token_cls": "ForTokenClassification"}


def hf_model_ref(ckpt: str | None) -> str | None:
    """The HF model a ``teacher.ckpt`` names (an existing dir, made absolute, or a hub id ``org/name``); None for a
    weights file (``.ckpt`` / ``.safetensors``), a missing path, or no ckpt. Reads nothing but the file system.

    >>> hf_model_ref("runs/teacher.safetensors"), hf_model_ref("org/xnli-model")
    (None, 'org/xnli-model')
    """
    name = str(ckpt or "").strip()
    if not name:
        return None
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path.resolve())
    if path.exists() or path.suffix in WEIGHT_SUFFIXES or _looks_like_path(name) or name.count("/") != 1:
        return None
    return name


def hf_model_name(ref: str) -> str:
    """The name a run records for an HF teacher: the dir's name, or the hub id.

    >>> hf_model_name("/models/my-xnli/"), hf_model_name("org/xnli-model")
    ('my-xnli', 'org/xnli-model')
    """
    path = Path(ref).expanduser()
    return path.resolve().name if path.is_dir() else ref


def model_tag(name: str, ckpt: str | None) -> str:
    """Run-dir tag of the model (``${sdq_model_tag:${model.name},${teacher.ckpt}}`` in ``hydra.run.dir``):
    the HF teacher's name (``/`` of a hub id as ``--``), else ``model.name``.

    >>> model_tag("me5_small", None), model_tag("me5_small", "org/xnli-model")
    ('me5_small', 'org--xnli-model')
    """
    ref = hf_model_ref(ckpt)
    return str(name) if ref is None else hf_model_name(ref).replace("/", "--")


def _head_kind(config) -> str | None:
    archs = list(getattr(config, "architectures", None) or [])
    return next((kind for kind, suffix in HEAD_CLASSES.items() if any(a.endswith(suffix) for a in archs)), None)


def _hub_kwargs(ref: str) -> dict:
    if Path(ref).expanduser().is_dir():
        return {}
    try:
        return hub_load_kwargs(ref)
    except SdqModelError:
        raise SdqModelError(
            f"teacher.ckpt={ref} is neither a local model dir nor a hub model available here (offline or the hub "
            f"is unreachable, and it is not in the HF cache {hf_cache_dir()}); fix: pass the save_pretrained dir "
            f"of your fine-tuned model, pre-download it (huggingface-cli download {ref}), or a .ckpt/.safetensors"
        ) from None


def hf_teacher_config(ref: str, task_kind: str, task_name: str = "") -> object:
    """The HF config of ``teacher.ckpt=ref``, checked: it loads and its head fits ``task_kind``
    (``token_cls`` needs ``…ForTokenClassification``, every other kind ``…ForSequenceClassification``)."""
    from transformers import AutoConfig

    path = Path(ref).expanduser()
    if path.is_dir() and not (path / "config.json").is_file():
        raise SdqModelError(f"teacher.ckpt={ref} is a directory without config.json; pass the dir written by "
                            "model.save_pretrained(...), or a .ckpt / .safetensors teacher file")
    kw = _hub_kwargs(ref)
    try:
        config = AutoConfig.from_pretrained(ref, **kw)
    except Exception as exc:  # noqa: BLE001 - OSError, ValueError, HTTP errors...: one line for each
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise SdqModelError(f"teacher.ckpt={ref}: cannot read its config ({type(exc).__name__}: {first}); "
                            "pass a save_pretrained dir or hub id of a fine-tuned classifier") from None
    want = "token_cls" if task_kind == "token_cls" else "seq_cls"
    have = _head_kind(config)
    archs = ", ".join(getattr(config, "architectures", None) or []) or "no architectures in config.json"
    task = f"task {task_name} ({task_kind})" if task_name else f"a {task_kind} task"
    if have is None:
        raise SdqModelError(
            f"teacher.ckpt={ref} is not a fine-tuned classifier ({archs}); {task} needs a "
            f"…{HEAD_CLASSES[want]} teacher; to fine-tune a base encoder first, pass model.name_or_path={ref} "
            "without teacher.ckpt")
    if have != want:
        raise SdqModelError(
            f"teacher.ckpt={ref} is a …{HEAD_CLASSES[have]} ({archs}) but {task} needs a …{HEAD_CLASSES[want]}; "
            "pass a teacher fine-tuned for this kind of task, or the task= it was fine-tuned for")
    return config


def model_labels(config) -> list[str]:
    """The labels of an HF config in id order (``id2label[0]``, ``id2label[1]``, ...)."""
    id2label = {int(k): str(v) for k, v in (getattr(config, "id2label", None) or {}).items()}
    return [id2label[i] for i in sorted(id2label)]


def label_order(ref: str, have: Sequence[str], want: Sequence[str]) -> list[int] | None:
    """None when the model's labels ``have`` equal the data's ``want`` in order; the model index of each
    data label when they are the same set in another order; else one SdqModelError naming both sets."""
    have, want = [str(x) for x in have], [str(x) for x in want]
    if have == want:
        return None
    if len(set(have)) == len(have) == len(want) and set(have) == set(want):
        return [have.index(label) for label in want]
    generic = all(re.fullmatch(r"LABEL_\d+", x) for x in have)
    fix = ("the model has generic labels: set model.config.id2label to the data's labels in the order it was "
           "trained with and save_pretrained again" if generic else
           "pass the teacher fine-tuned on these labels, or data whose labels are the model's")
    raise SdqModelError(f"teacher.ckpt={ref} labels {have} differ from the data's labels {want}; fix: {fix}")


def reorder_head(model, order: list[int], labels: Sequence[str]) -> None:
    """Reorder the output rows of the classifier's output Linear (the one Linear with ``len(order)``
    outputs) to ``order`` (model index of each data label) and set ``id2label``/``label2id`` to ``labels``:
    logits come out in the data's label order (checked on a probe input)."""
    import torch
    from torch import nn

    heads = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == len(order)]
    probe = torch.tensor([[0, 5, 6, 2]]) if model.config.vocab_size > 6 else torch.zeros(1, 4, dtype=torch.long)
    fail = SdqModelError(f"the labels of {type(model).__name__} are in another order than the data's "
                         f"{list(labels)} and its output layer could not be reordered; save the model with "
                         "id2label in the data's order")
    if len(heads) != 1:
        raise fail
    head = heads[0]
    model.eval()
    with torch.no_grad():
        before = model(input_ids=probe).logits
        old = head.weight.clone(), None if head.bias is None else head.bias.clone()
        head.weight.copy_(old[0][order])
        if head.bias is not None:
            head.bias.copy_(old[1][order])
        if not torch.allclose(model(input_ids=probe).logits, before[..., order]):
            raise fail
    model.config.id2label = dict(enumerate(str(x) for x in labels))
    model.config.label2id = {label: i for i, label in model.config.id2label.items()}


def hf_teacher_tokenizer(ref: str, config):
    """The tokenizer saved with the teacher (``tokenizer.save_pretrained(<dir>)``), checked to fit its vocabulary."""
    path = Path(ref).expanduser()
    how = f"save it beside the model: tokenizer.save_pretrained('{ref}')"
    if path.is_dir() and not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise SdqModelError(f"teacher.ckpt={ref} holds no tokenizer (none of {', '.join(TOKENIZER_FILES[:3])}, ...); "
                            f"{how}")
    try:
        tok = load_tokenizer(ref)
    except SdqModelError as exc:
        raise SdqModelError(f"teacher.ckpt={ref}: its tokenizer does not load ({exc}); {how}") from None
    vocab = int(getattr(config, "vocab_size", 0) or 0)
    if vocab and len(tok) > vocab:
        raise SdqModelError(f"teacher.ckpt={ref}: its tokenizer has {len(tok)} tokens but the model only {vocab} "
                            f"embeddings; {how} (the one it was fine-tuned with)")
    return tok


def load_hf_teacher(ref: str, config, labels: Sequence[str]):
    """The teacher model of ``ref`` in float32 with every weight loaded (never a randomly initialized part),
    its logits in the order of the data's ``labels`` (see :func:`label_order`)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    order = label_order(ref, model_labels(config), labels)
    auto = AutoModelForTokenClassification if _head_kind(config) == "token_cls" else AutoModelForSequenceClassification
    try:
        model, info = auto.from_pretrained(ref, config=config, dtype=torch.float32, output_loading_info=True,
                                           **_hub_kwargs(ref))
    except Exception as exc:  # noqa: BLE001 - missing/corrupt weights, HTTP errors...: one line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise SdqModelError(f"teacher.ckpt={ref}: cannot load its weights ({type(exc).__name__}: {first}); "
                            "pass the dir written by model.save_pretrained(...)") from None
    missing = list(info.get("missing_keys") or []) + list(info.get("mismatched_keys") or [])
    if missing:
        raise SdqModelError(f"teacher.ckpt={ref}: {len(missing)} weights are not in its files (e.g. {missing[0]!r}) "
                            "and would start random; pass a complete save_pretrained dir of the fine-tuned model")
    if order is not None:
        reorder_head(model, order, labels)
    return model.eval()
