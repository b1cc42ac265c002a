"""GPTQ towards the teacher (asymmetric calibration, as GPTAQ, Li et al. 2025): the quantized Linears are
rounded in the order the forward pass calls them, each measured on the student whose layers below are
already rounded, and each aims at the FP teacher's output of that layer rather than at its own float
output: ``min ||X_t W^T - X_q Q^T||`` over codes Q, where X_t is the teacher's input to the layer and X_q the
student's (after its activation quantizer), on the same tokens. With ``H = X_q^T X_q`` and
``G = X_t^T X_q`` that is GPTQ on ``W* = W + W (G - H) H^-1`` (:func:`sdq.calib.gptq.towards`): the error
that the layers below and the activation quantizers carry in, as far as it is linear in X_q, is taken
out at every layer.

The encoder's blocks run one at a time on cached inputs (:mod:`sdq.calib.replay`), so each group of layers
costs a pass of student and teacher through its own block only, stopped after the group, not a full forward
pass; layers outside the blocks (or a model whose blocks cannot be replayed) take one full forward pass per
group of layers.

>>> calibrate(student, batches, len(batches))             # activation ranges first
>>> n = gptq_teacher(student, teacher, batches, bias=True)   # teacher: the FP model the student was copied from
>>> # bias=True fits the biases towards the teacher too: no correct_bias after it (that would undo the fit)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from sdq.calib.calibrate import each_call, inputs_of, watching
from sdq.calib.gptq import round_layer, targets, what_it_multiplies
from sdq.calib.replay import Caught, Stack
from sdq.quant.modules import QuantLinear

Run = tuple[torch.Tensor | None, Callable[[], object], Callable[[], object]]  # (mask, student fwd, teacher fwd)


def call_order(model: nn.Module, batch: dict, names: list[str]) -> list[list[str]]:
    """The modules ``names`` of ``model`` in the order one forward pass on ``batch`` calls them, those
    called on the same input tensor in one group (e.g. a layer's query, key and value):
    ``[["l0.query", "l0.key", "l0.value"], ["l0.out"], ...]``; modules not called come last, one each."""
    mods, groups, seen = dict(model.named_modules()), [], set()
    last: list[torch.Tensor | None] = [None]  # the previous call's input, kept alive for the identity test

    def hook(name: str):
        def call(mod: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
            if name in seen:
                return  # a module called twice: its first call fixes its place
            if groups and inputs[0] is last[0]:
                groups[-1].append(name)
            else:
                groups.append([name])
            seen.add(name)
            last[0] = inputs[0]
        return call

    handles = [mods[n].register_forward_hook(hook(n)) for n in names]
    try:
        each_call(model, [batch], {}, lambda *a: None)
    finally:
        for h in handles:
            h.remove()
    return groups + [[n] for n in names if n not in seen]


@dataclass
class Moments:
    """Sums over the tokens a layer saw: ``h = X_q^T X_q``, ``g = X_t^T X_q`` (each (in, in)), ``st`` and ``sq``
    the sums of X_t and X_q (each (in,)), ``n`` tokens."""

    h: torch.Tensor
    g: torch.Tensor
    st: torch.Tensor
    sq: torch.Tensor
    n: int = 0

    def centered(self) -> tuple[torch.Tensor, torch.Tensor]:
        """h and g about the means: what is left once a bias takes the means' share."""
        mt, mq = self.st / max(self.n, 1), self.sq / max(self.n, 1)
        return self.h - self.n * torch.outer(mq, mq), self.g - self.n * torch.outer(mt, mq)


def _moments(layers: dict[str, QuantLinear], t_layers: dict[str, nn.Module], runs: Iterable[Run]) -> dict[str, Moments]:
    """Each layer's :class:`Moments` over ``runs``: the teacher's input to the same-named layer (X_t) against
    the student's (X_q, after its activation quantizer), on the same tokens; forwards stop after the layers."""
    out = {n: Moments(torch.zeros(m.in_features, m.in_features, dtype=torch.float64),
                      torch.zeros(m.in_features, m.in_features, dtype=torch.float64),
                      torch.zeros(m.in_features, dtype=torch.float64), torch.zeros(m.in_features, dtype=torch.float64))
           for n, m in layers.items()}
    xt: dict[str, torch.Tensor] = {}

    def pair(name: str, mod: QuantLinear, x: torch.Tensor, _out: torch.Tensor) -> None:
        xq, acc = what_it_multiplies(mod, x), out[name]  # (N, in)
        t = mod.rotate_input(xt[name].to(xq.device))  # (N, in): the teacher's input on the same tokens, in the
        # student's basis (rotated with it), wherever the teacher runs
        # products in float32 where the activations are (as gptq's H), each batch's sum kept in float64
        acc.h += (xq.T @ xq).double().cpu()
        acc.g += (t.T @ xq).double().cpu()
        acc.st += t.sum(0, dtype=torch.float64).cpu()
        acc.sq += xq.sum(0, dtype=torch.float64).cpu()
        acc.n += xq.shape[0]

    def keep(name: str, mod: nn.Module, x: torch.Tensor, _out: torch.Tensor) -> None:
        xt[name] = x.float()  # (N, in)

    with watching(t_layers, keep, stop=True) as t_run, watching(layers, pair, stop=True) as s_run:
        for mask, student, teacher in runs:
            t_run(mask, teacher)
            s_run(mask, student)
    return out


def _round_towards(mod: QuantLinear, t_mod: nn.Linear, m: Moments, damp: float, bias: bool) -> None:
    """GPTQ towards the teacher's layer ``t_mod`` on one layer; with ``bias`` the bias takes the teacher's mean
    output too (the intercept of the same least squares: the weights on the centered moments, then
    ``b = b_t + W_t mean(X_t) - Q mean(X_q)`` with Q the quantized weight)."""
    w = mod.rotate_input(t_mod.weight.detach().cpu().double())  # (R, C): the teacher's weight, student's basis
    if not (bias and mod.bias is not None and t_mod.bias is not None and m.n):
        round_layer(mod, m.h, damp, m.g, target=w)
        return
    h, g = m.centered()
    round_layer(mod, h, damp, g, target=w)
    q = mod.weight_quantizer(mod.weight).detach().cpu().double()  # (R, C): what the student multiplies
    b = t_mod.bias.detach().cpu().double() + w @ (m.st / m.n) - q @ (m.sq / m.n)  # (R,)
    mod.bias.copy_(b.to(mod.bias))


@torch.no_grad()
def gptq_teacher(model: nn.Module, teacher: nn.Module, batches: Iterable[dict], damp: float = 0.01,
                 bias: bool = False) -> int:
    """Re-round every quantized Linear of ``model`` (:func:`sdq.calib.gptq.targets`) with GPTQ towards the
    teacher's output of it, in call order, on ``batches`` (padding tokens excluded); returns how many weight
    matrices it re-rounded. ``teacher``: the FP model ``model`` was copied from (the same module names). ``bias``: each
    bias is fit towards the teacher's mean output as well (in place of :func:`sdq.calib.correct_bias`, which
    corrects a layer's own shift only, not the shift carried in from the layers below)."""
    batches, layers = list(batches), targets(model)
    t_mods = dict(teacher.named_modules())

    def fp_twin(name: str) -> bool:  # the teacher's FP Linear of the same shape
        t = t_mods.get(name)
        return isinstance(t, nn.Linear) and not isinstance(t, QuantLinear) and t.weight.shape == layers[name].weight.shape

    if missing := [n for n in layers if not fp_twin(n)]:
        raise ValueError(f"gptq: the teacher has no FP Linear {missing[0]!r} of the student's shape; pass the FP "
                         "model the student was copied from")
    if not batches or not layers:
        return 0
    was = model.training, teacher.training
    model.eval(), teacher.eval()

    def round_group(group: list[str], runs: Iterable[Run]) -> None:
        moments = _moments({n: layers[n] for n in group}, {n: t_mods[n] for n in group}, runs)
        for name in group:
            _round_towards(layers[name], t_mods[name], moments[name], damp, bias)

    def full_passes() -> list[Run]:
        return [(b.get("attention_mask"), lambda b=b: model(**inputs_of(b)), lambda b=b: teacher(**inputs_of(b)))
                for b in batches]

    try:
        groups = call_order(model, batches[0], list(layers))
        stack = Stack.find(model, layers)
        in_block = [stack.block_of(g[0]) if stack and len({stack.block_of(n) for n in g}) == 1 else None
                    for g in groups]
        first = next((k for k, i in enumerate(in_block) if i is not None), len(groups))
        for group in groups[:first]:  # layers the forward calls before the blocks
            round_group(group, full_passes())
        done = set(range(first))
        if first < len(groups):  # then the blocks, replayed where they can be
            caught = stack.catch(model, batches), stack.catch(teacher, batches)
            if all(c is not None for c in caught):
                done |= _blocks(caught, groups, in_block, round_group)
        for k, group in enumerate(groups):  # after the blocks, or everything where they cannot be replayed
            if k not in done:
                round_group(group, full_passes())
    finally:
        model.train(was[0]), teacher.train(was[1])
    return len(layers)


def _blocks(caught: tuple[Caught, Caught], groups: list[list[str]], in_block: list[int | None],
            round_group: Callable[[list[str], Iterable[Run]], None]) -> set[int]:
    """Each block's groups in order on the cached inputs, then the block's outputs become the next inputs;
    returns the indices of the groups done."""
    student, teacher = caught
    done = set()
    for i in range(len(student.blocks)):
        for k, group in enumerate(groups):
            if in_block[k] == i:
                round_group(group, [(student.masks[b], lambda b=b, i=i: student.run(i, b),
                                     lambda b=b, i=i: teacher.run(i, b))
                                    for b in range(len(student.hidden))])
                done.add(k)
        if i + 1 < len(student.blocks):
            student.advance(i), teacher.advance(i)
    return done
