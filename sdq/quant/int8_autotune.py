"""Pick the fastest of several exact int8 GEMM kernels for one GEMM shape by timing them on its first call.

:class:`~sdq.quant.intlinear.Int8Linear` can run its product on up to four kernels (``torch._int_mm``,
oneDNN's u8 x s8 linear, onnxruntime's integer GEMM, the codes in an fp32 GEMM). All of them give the same
floats (tested bit for bit), so choosing between them changes only the speed, and which one is fastest
depends on the CPU (VNNI or not), the thread count and the shape: measured on a 2-core AMD EPYC (AVX2),
7-bit codes at 4096 rows ran 15-40 % faster on oneDNN than on onnxruntime, while alone at 128 rows
onnxruntime was faster on three of four shapes. So, like an autotuning compiler, the first call of each shape
times every candidate (one warm-up, then the best of ``reps``) and the choice is kept for the process; the
rule's kernel (the first candidate) stays unless another is clearly faster.

>>> kernel = fastest(("cpu", 2, 384, 1536, 4096), ("onednn", "ort"), lambda k: layer._run(x2, k))
>>> tuned()          # {("cpu", 2, 384, 1536, 4096): "onednn"}
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Sequence

_choice: dict[Hashable, str] = {}


def fastest(key: Hashable, candidates: Sequence[str], run: Callable[[str], object], reps: int = 3,
            margin: float = 0.1, clock: Callable[[], float] = time.perf_counter) -> str:
    """The candidate ``c`` for which ``run(c)`` took least time (one warm-up call each, then the minimum over
    ``reps`` interleaved rounds), measured on the first call for ``key`` and cached after it. The first
    candidate is the default: another replaces it only when it was at least ``margin`` faster, so that timing
    noise (~10 % on a shared 2-core VM) does not swap kernels that are level. ``run`` must finish its work
    before returning (synchronize an asynchronous device inside it)."""
    if key in _choice:
        return _choice[key]
    if len(candidates) == 1:
        return candidates[0]
    for c in candidates:  # warm-up: packed weights, sessions and compiled kernels are built here
        run(c)
    best = dict.fromkeys(candidates, float("inf"))
    for _ in range(reps):
        for c in candidates:
            t = clock()
            run(c)
            best[c] = min(best[c], clock() - t)
    quickest = min(candidates, key=best.__getitem__)  # ties: the earlier candidate
    _choice[key] = quickest if best[quickest] < (1 - margin) * best[candidates[0]] else candidates[0]
    return _choice[key]


def tuned() -> dict[Hashable, str]:
    """A copy of the choices made so far in this process, by key."""
    return dict(_choice)


def forget() -> None:
    """Drop every choice (the next call of each shape times its candidates again)."""
    _choice.clear()


def rows_bucket(m: int) -> int:
    """``m`` rounded up to a power of two: one timing per 2x range of GEMM rows (batch x sequence)."""
    return 1 << max(m - 1, 0).bit_length()
