"""Config checks applied right after Hydra composes, before any model is loaded; the ``bits=N`` resolver.

``bits=N`` reaches the quant presets at composition: their weight/embedding bits read ``${bits_or:<own>}``
(``python train.py bits=4 --cfg job --resolve`` shows ``quant.weight.bits: 4``).

>>> cfg = resolve_config(cfg)   # validates bits, task/method/quant/languages
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from omegaconf import DictConfig, OmegaConf

from sdq.data.task_config import task_from_config
from sdq.data.unlabeled import UnlabeledSpec
from sdq.errors import SdqConfigError
from sdq.models.hf_teacher import model_tag

METHODS = ("fp", "fp_continued", "ptq", "ptq_datafree", "qat", "qat_kd", "sdq", "sdq_paper", "sdq_noise")


def quant_tag(name: str, bits: Any) -> str:
    """Run-dir tag: the quant preset, plus the bits shortcut when given (``w8a8`` / ``w8a8-b4``)."""
    return name if bits in (None, "None", "null") else f"{name}-b{bits}"


def bits_or(default: Any, *, _root_: DictConfig) -> Any:
    """``${bits_or:8}`` in a quant preset: the run's ``bits=N`` when given, else the preset's own ``8``."""
    bits = _root_.get("bits")
    return default if bits is None else bits


# ${sdq_model_tag:${model.name},${teacher.ckpt}} (hydra.run.dir): the HF teacher's name, else model.name
for _name, _fn in (("sdq_quant_tag", quant_tag), ("bits_or", bits_or), ("sdq_model_tag", model_tag)):
    if not OmegaConf.has_resolver(_name):
        OmegaConf.register_new_resolver(_name, _fn)


def check_bits(cfg: DictConfig) -> None:
    """``bits=N``: an integer 1..8 that the chosen quant preset takes (SdqConfigError otherwise)."""
    bits = cfg.get("bits")
    if bits is None:
        return
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
        raise SdqConfigError(
            f"bits={bits!r} is not a supported bit-width: use an integer from 1 to 8 "
            "(e.g. bits=8, bits=4, bits=2), or quant=fp32 for full precision"
        )
    if not cfg.method.get("quantize"):
        return
    parts = {part: cfg.quant.get(part) for part in ("weight", "embedding")}
    preset = cfg.quant.get("name")
    if all(spec is None for spec in parts.values()):
        raise SdqConfigError(
            f"bits={bits} with quant={preset}: the preset quantizes no weights or embeddings to set the bits "
            f"of; choose a quantized preset, e.g. quant=w8a8 bits={bits} (W{bits}A8) or quant=w8 bits={bits} "
            "(weights only)"
        )
    for part, spec in parts.items():
        if spec is not None and spec.get("bits") != bits:
            raise SdqConfigError(
                f"bits={bits} with quant={preset}: quant.{part}.bits is fixed at {spec.get('bits')!r} (an "
                f"override or the preset); drop one of the two, or write `bits: ${{bits_or:{spec.get('bits')}}}` "
                "in the preset to let bits= set it"
            )


def quant_dict(cfg: DictConfig) -> dict:
    """The quant section as the plain dict ``QuantConfig.from_dict`` takes (method quant-noise merged)."""
    q = OmegaConf.to_container(cfg.quant, resolve=True)
    q.pop("name", None)
    q.pop("defaults", None)
    noise = cfg.method.get("quant_noise", 0.0) or 0.0
    if noise:
        q["quant_noise_p"] = float(noise)
    return q


def resolve_config(cfg: DictConfig) -> DictConfig:
    """Validate every user choice that can be checked without loading a model."""
    check_bits(cfg)
    spec = task_from_config(cfg.task)  # unknown task, kind, metric, source keys -> SdqConfigError
    if cfg.method.name not in METHODS:
        raise SdqConfigError(f"method={cfg.method.name!r} is unknown; choose one of: {', '.join(METHODS)}")
    langs = cfg.data.get("languages")
    if langs is not None and not spec.open_languages:  # open (sib200): checked against the data folder
        bad = [lang for lang in langs if lang not in spec.languages]
        if bad:
            raise SdqConfigError(
                f"data.languages: {', '.join(map(str, bad))} not in task {spec.name} "
                f"(languages: {', '.join(spec.languages)})"
            )
    for key in ("batch_size", "eval_batch_size", "max_length"):
        value = cfg.data.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise SdqConfigError(f"data.{key}={value!r} must be a positive integer")
    drop = cfg.method.get("student_dropout")
    if drop is not None and (isinstance(drop, bool) or not isinstance(drop, int | float) or not 0.0 <= drop < 1.0):
        raise SdqConfigError(f"method.student_dropout={drop!r} must be a number in [0, 1) or null (model's own)")
    for key in ("calibrate_multilingual", "calibrate_unlabeled"):
        n = cfg.method.get(key, 0)
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise SdqConfigError(f"method.{key}={n!r} must be an integer >= 0 (0 = off)")
    unl = UnlabeledSpec.from_config(plain(cfg.get("unlabeled")))
    n_unl = cfg.method.get("calibrate_unlabeled") if unl.enabled else 0  # ignored without a source
    has_batches = bool(cfg.method.get("calibrate_batches") or cfg.method.get("calibrate_multilingual") or n_unl)
    for key in ("gptq", "gptq_teacher", "bias_correction"):  # steps measured on the calibration batches
        on = cfg.method.get(key, False)
        if not isinstance(on, bool):
            raise SdqConfigError(f"method.{key}={on!r} must be true or false")
        if key == "gptq_teacher" and on and not cfg.method.get("gptq"):
            raise SdqConfigError("method.gptq_teacher=true sets how GPTQ rounds, and method.gptq=false; "
                                 "set method.gptq=true as well, or method.gptq_teacher=false")
        if on and cfg.method.quantize and not has_batches:
            raise SdqConfigError(f"method.{key}=true measures on the calibration batches, and this run has "
                                 "none; set method.calibrate_batches=16 (or calibrate_multilingual, or "
                                 "calibrate_unlabeled with an unlabeled= source)")
    if cfg.method.quantize:
        from sdq.quant import QuantConfig

        qcfg = QuantConfig.from_dict(quant_dict(cfg)).validate()
        scheme = qcfg.weight.scheme if qcfg.weight is not None else None
        if cfg.method.get("gptq") and scheme not in (None, "uniform", "lsq"):
            raise SdqConfigError(f"method.gptq=true rounds weights on a uniform grid, and quant.weight.scheme="
                                 f"{scheme!r} has none; use quant.weight.scheme=uniform (or lsq), or method.gptq=false")
    return cfg


def plain(node: Any) -> Any:
    """A config node as plain resolved containers; anything else as it is.

    >>> plain(cfg.get("unlabeled"))   # dict, list, scalar or None
    """
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def plain_config(cfg: DictConfig) -> dict:
    """The resolved run config as plain containers, without Hydra's own section."""
    return {k: plain(v) for k, v in cfg.items() if k != "hydra"}


def fingerprint(cfg: DictConfig) -> dict:
    """What a checkpoint must agree on to be resumed or reused by this config."""
    return {
        "model": str(cfg.model.name_or_path),
        "task": str(cfg.task.name),
        "method": str(cfg.method.name),
        "quant": quant_dict(cfg) if cfg.method.quantize else None,
    }


def stable_hash(obj: Any) -> str:
    """Short content hash of a JSON-able object (teacher cache keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]
