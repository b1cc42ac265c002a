"""Calibration that needs a model, data or plots: what ``sdq.quant`` (tensors and modules only) leaves out.

- :func:`calibrate`: observers of a prepared model see batches, no gradient step;
- :func:`gptq`: each quantized Linear's weight re-rounded column by column (GPTQ) on calibration batches;
- :func:`gptq_teacher`: the same, layer by layer in call order, towards the FP teacher's outputs;
- :func:`correct_bias`: each quantized Linear's bias absorbs the mean output shift of its quantization;
- :mod:`sdq.calib.datafree`: multilingual pseudo-sentences from the tokenizer's unigram model, calibration
  batches, data-free PTQ (:func:`prepare_datafree`);
- :mod:`sdq.calib.sensitivity`: one-module-at-a-time quantization sensitivity, budgets, tables and plots
  (command line: ``python -m sdq.calib.sensitivity_cli``);
- :func:`frequencies_for_run`: token frequencies for per-token embedding bits.

>>> from sdq.calib import calibrate, calibration_batches, prepare_datafree
>>> calibrate(model, calibration_batches(dm.train_dataloader(), 16, tokenizer, n_pseudo=128), 20)
"""

from sdq.calib.bias_correction import correct_bias
from sdq.calib.calibrate import calibrate
from sdq.calib.datafree import calibration_batches, datafree_batches, prepare_datafree
from sdq.calib.frequencies import frequencies_for_run
from sdq.calib.gptq import gptq
from sdq.calib.gptq_teacher import gptq_teacher
from sdq.calib.sensitivity import budget_skip, kind_sensitivity, layer_sensitivity, write_sensitivity

__all__ = [
    "budget_skip",
    "calibrate",
    "calibration_batches",
    "correct_bias",
    "datafree_batches",
    "frequencies_for_run",
    "gptq",
    "gptq_teacher",
    "kind_sensitivity",
    "layer_sensitivity",
    "prepare_datafree",
    "write_sensitivity",
]
