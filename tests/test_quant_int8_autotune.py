"""Kernel autotuning (sdq.quant.int8_autotune): the fastest candidate by a fake clock, cached per key; an
Int8Linear left to choose gives the same floats as every forced kernel and records its choice."""

import pytest
import torch

from sdq.quant import int8_autotune as at
from sdq.quant.intlinear import Int8Linear, int8_kernels, use_int8_kernel


@pytest.fixture(autouse=True)
def fresh():
    at.forget()
    yield
    at.forget()


class FakeTimer:
    """``run(c)`` advances a fake clock by ``cost[c]`` (``first[c]`` on its first call) and logs the call."""

    def __init__(self, cost: dict, first: dict | None = None):
        self.now, self.cost, self.first, self.calls = 0.0, cost, first or {}, []

    def clock(self) -> float:
        return self.now

    def run(self, c: str) -> None:
        self.now += self.first.pop(c) if c in self.first else self.cost[c]
        self.calls.append(c)


def test_fastest_picks_the_least_time_and_keeps_it():
    t = FakeTimer({"onednn": 3.0, "ort": 1.0, "fp32": 5.0}, first={"ort": 100.0})  # slow warm-up only
    assert at.fastest("k", ("onednn", "ort", "fp32"), t.run, reps=2, clock=t.clock) == "ort"
    assert t.calls == ["onednn", "ort", "fp32"] * 3  # one warm-up round, two timed rounds
    t.cost["ort"] = 9.0
    assert at.fastest("k", ("onednn", "ort", "fp32"), t.run, clock=t.clock) == "ort"  # cached: not timed again
    assert len(t.calls) == 9 and at.tuned() == {"k": "ort"}
    assert at.fastest("k2", ("onednn", "ort", "fp32"), t.run, reps=1, clock=t.clock) == "onednn"  # new key


def test_the_first_candidate_stays_unless_clearly_faster():
    t = FakeTimer({"rule": 1.0, "alt": 0.91})  # 9 % faster: within the default 10 % margin
    assert at.fastest("near", ("rule", "alt"), t.run, clock=t.clock) == "rule"
    t.cost["alt"] = 0.89  # 11 % faster
    assert at.fastest("clear", ("rule", "alt"), t.run, clock=t.clock) == "alt"
    assert at.fastest("no margin", ("rule", "alt"), t.run, margin=0.0, clock=t.clock) == "alt"
    t.cost["alt"] = 0.95
    assert at.fastest("no margin 2", ("rule", "alt"), t.run, margin=0.0, clock=t.clock) == "alt"


def test_fastest_ties_and_single_candidate():
    t = FakeTimer({"a": 2.0, "b": 2.0, "c": 2.0})
    assert at.fastest("tie", ("b", "a", "c"), t.run, margin=0.0, clock=t.clock) == "b"
    t.calls.clear()
    assert at.fastest("one", ("a",), t.run, clock=t.clock) == "a" and t.calls == []
    assert "one" not in at.tuned()


def test_rows_bucket():
    assert [at.rows_bucket(m) for m in (0, 1, 2, 3, 128, 129, 4096, 4097)] == [1, 1, 2, 4, 128, 256, 4096, 8192]


def int8_layer(lim: int, k: int = 64, n: int = 48, bias: bool = True, seed: int = 0) -> Int8Linear:
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(-lim, lim + 1, (n, k), generator=g)
    codes[0, 0], codes[1, 0] = -lim, lim  # the codes' full range
    w_scale = torch.rand(n, generator=g) * 1e-2 + 1e-3
    b = torch.randn(n, generator=g) if bias else None
    return Int8Linear(codes, w_scale, b, 0.03, 7.0, 0.0, 255.0)


@pytest.mark.parametrize("lim", [64, 127], ids=["7bit", "8bit"])
@pytest.mark.parametrize("bias", [True, False])
def test_int8linear_tuned_equals_every_kernel(lim, bias):
    m = int8_layer(lim, bias=bias)
    kernels = int8_kernels(torch.device("cpu"), s8_codes=lim == 64)
    assert len(kernels) >= 2  # onnxruntime is a dependency: at least ort and fp32 to choose from
    for rows in (1, 5, 300):
        x = torch.randn(rows, 64) * 3
        with torch.no_grad():
            y = m(x)
            for k in kernels:
                with use_int8_kernel(k):
                    assert torch.equal(m(x), y), (k, rows)
    choices = at.tuned()
    assert {key[5] for key in choices} == {1, 8, 512}  # one timing per rows bucket, none while forced
    assert all(key[3:5] == (64, 48) and key[-1] == kernels and c in kernels for key, c in choices.items())


def test_int8linear_runs_the_chosen_kernel(monkeypatch):
    m = int8_layer(64)
    ran = []
    real = Int8Linear._run
    monkeypatch.setattr(Int8Linear, "_run", lambda self, x2, k: (ran.append(k), real(self, x2, k))[1])
    kernels = int8_kernels(torch.device("cpu"), s8_codes=True)
    x = torch.randn(4, 64)
    with torch.no_grad():
        m(x)  # times every candidate, then runs the choice
        chosen = next(iter(at.tuned().values()))
        ran.clear()
        m(x)
        m(torch.randn(3, 64))  # same rows bucket (4): no new timing
    assert ran == [chosen, chosen] and len(at.tuned()) == 1 and chosen in kernels
