"""Quantizer base: grouped layout, phases (calibrate/frozen/learn) and re-fit schedule, all state in buffers.

A quantizer sees a weight (R, C) or activations (..., C) and works on a grouped 2-D view (G, n), one
set of params per group row: tensor (1, numel); channel/row (R, C) for weights, (C, N) for activations
(last dim); group (R*C/group_size, group_size).

>>> q = UniformQuantizer(QuantizerConfig(bits=4, granularity="channel"), (16, 32))
>>> y = q(w)                   # fake-quantized, same shape as w
"""

from __future__ import annotations

import torch
from torch import nn

from sdq.quant.config import QuantizerConfig

PHASES = ("calibrate", "frozen", "learn")


class QuantizerBase(nn.Module):
    """Common state: ``phase`` (int8: 0 calibrate, 1 frozen, 2 learn), ``enabled``, ``initialized``, ``step``.

    Subclasses implement ``_fit(x2d, gidx)`` (update params from data; gidx: group rows being fitted,
    None = all) and ``_quantize(x2d, gidx)`` (fake quant with STE).
    """

    def __init__(self, cfg: QuantizerConfig, shape: tuple[int, ...], kind: str = "weight"):
        super().__init__()
        if kind not in ("weight", "act"):
            raise ValueError(f"kind={kind!r}: use 'weight' or 'act'")
        self.cfg, self.kind, self.shape = cfg, kind, tuple(int(s) for s in shape)
        self.register_buffer("phase", torch.tensor(0, dtype=torch.int8))
        self.register_buffer("enabled", torch.tensor(True))
        self.register_buffer("initialized", torch.tensor(False))
        self.register_buffer("step", torch.tensor(0, dtype=torch.long))
        self._phase, self._enabled, self._initialized = 0, True, False  # host mirrors: no GPU syncs
        self._step = 0  # host counter of training forwards; written to the ``step`` buffer when saved
        self._fit_key: tuple | None = None  # (storage, version, shape) of the weight last fitted
        self.n_groups, self.group_numel = self._layout()

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self.sync_state()

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        self.step.fill_(self._step)  # once per save, not a kernel (and a GPU sync) per forward
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def sync_state(self) -> None:
        """Refresh the host mirrors of ``phase``/``enabled``/``initialized``/``step`` after writing the buffers."""
        self._phase, self._enabled = int(self.phase), bool(self.enabled)
        self._initialized, self._step = bool(self.initialized), int(self.step)

    def _mark_initialized(self) -> None:
        self.initialized.fill_(True)
        self._initialized = True

    @classmethod
    def from_config(cls, cfg: QuantizerConfig, shape: tuple[int, ...], kind: str = "weight") -> QuantizerBase:
        """``cls(cfg, shape, kind)`` (the quantizer matching ``cfg.scheme``: :func:`sdq.quant.factory.make_quantizer`)."""
        return cls(cfg, shape, kind)

    # ------------------------------------------------------------------ layout
    def _layout(self) -> tuple[int, int]:
        g = self.cfg.granularity
        if self.kind == "act":
            return (1, -1) if g == "tensor" else (self.shape[-1], -1)
        rows, numel = self.shape[0], 1
        for s in self.shape:
            numel *= s
        if g == "tensor":
            return 1, numel
        if g == "group":
            return numel // self.cfg.group_size, self.cfg.group_size
        return rows, numel // rows

    @property
    def groups_per_row(self) -> int:
        return self.n_groups // self.shape[0] if self.kind == "weight" else 1

    def view2d(self, x: torch.Tensor) -> torch.Tensor:
        """x -> (G', n) grouped view (G' = G, or a subset of rows for weights)."""
        g = self.cfg.granularity
        if g == "tensor":
            return x.reshape(1, -1)
        if self.kind == "act":
            return x.reshape(-1, x.shape[-1]).t()  # (C, N)
        if g == "group":
            return x.reshape(-1, self.cfg.group_size)
        return x.reshape(x.shape[0], -1)

    def unview(self, y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        if self.kind == "act" and self.cfg.granularity != "tensor":
            return y.t().reshape(like.shape)
        return y.reshape(like.shape)

    def group_index(self, rows: torch.Tensor | None) -> torch.Tensor | None:
        """Group indices (G',) covering weight rows ``rows`` (row-local granularities only)."""
        if rows is None or self.cfg.granularity == "tensor":  # tensor: one shared set of params
            return None
        gpr = self.groups_per_row
        return (rows[:, None] * gpr + torch.arange(gpr, device=rows.device)).reshape(-1)

    @staticmethod
    def take(t: torch.Tensor, gidx: torch.Tensor | None) -> torch.Tensor:
        return t if gidx is None else t[gidx]

    @staticmethod
    def put_(t: torch.Tensor, gidx: torch.Tensor | None, value: torch.Tensor) -> None:
        with torch.no_grad():
            if gidx is None:
                t.copy_(value)
            else:
                t[gidx] = value.to(t.dtype)

    # ------------------------------------------------------------------ phases
    @property
    def phase_name(self) -> str:
        return PHASES[self._phase]

    def set_phase(self, phase: str) -> None:
        self._phase = PHASES.index(phase)
        self.phase.fill_(self._phase)

    def set_enabled(self, enabled: bool) -> None:
        self._enabled = bool(enabled)
        self.enabled.fill_(self._enabled)

    def _needs_fit(self, x: torch.Tensor) -> bool:
        """Calibrate phase: activations always; a weight only when it changed since its last fit (its
        storage/version counter: an unchanged 250k-row table is not re-fitted every batch). Later: LSQ
        never, others every ``refit_every`` training steps."""
        if not self._initialized:
            return True
        if self._phase == 0:
            return self.kind == "act" or tensor_key(x) != self._fit_key
        if self.cfg.scheme == "lsq" and self._phase == 2:
            return False
        every = self.cfg.refit_every
        return self.kind == "weight" and self.training and every > 0 and self._step % every == 0

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Fake-quantize ``x``; ``rows``: x holds only these rows of the weight (row-local granularity)."""
        if not self._enabled:
            return x
        x2d = self.view2d(x)
        gidx = self.group_index(rows)
        if (rows is None or gidx is not None) and self._needs_fit(x):  # per-tensor params: never from a subset
            with torch.no_grad():
                self._fit(x2d.detach(), gidx)
                if gidx is None:
                    self._mark_initialized()
                    self._fit_key = tensor_key(x) if self.kind == "weight" else None  # (no version in inference mode)
        if self.training:
            self._step += 1
        return self.unview(self._quantize(x2d, gidx), x)

    @torch.no_grad()
    def calibrate_(self, w: torch.Tensor) -> None:
        """Fit params to a full weight now (prepare does this once for every weight quantizer)."""
        self._fit(self.view2d(w.detach()), None)
        self._mark_initialized()
        self._fit_key = tensor_key(w)

    def _fit(self, x2d: torch.Tensor, gidx: torch.Tensor | None) -> None:
        raise NotImplementedError

    def _quantize(self, x2d: torch.Tensor, gidx: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    # ------------------------------------------------------------------ export / report
    def storage_bits(self) -> tuple[float, float]:
        """(bits per quantized value on average, overhead bits for params) for the size report."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        c = self.cfg
        gran = f"group{c.group_size}" if c.granularity == "group" else c.granularity
        parts = [f"bits={c.bits}", f"scheme={c.scheme}", f"granularity={gran}", f"kind={self.kind}"]
        if c.scheme in ("uniform", "lsq"):
            parts += [f"symmetric={c.symmetric}", f"observer={c.observer}"]
        return ", ".join(parts + [f"phase={self.phase_name}"])


def tensor_key(x: torch.Tensor) -> tuple:
    """Identity of a tensor's current contents: storage pointer, in-place version counter, shape."""
    return x.data_ptr(), x._version, tuple(x.shape)


def chunks(n: int, per: int, limit: int = 1 << 24):
    """Slices over n group rows so that each chunk holds at most ``limit`` values (memory bound)."""
    step = max(1, limit // max(per, 1))
    for i in range(0, n, step):
        yield slice(i, min(n, i + step))
