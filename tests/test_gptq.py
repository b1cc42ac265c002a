"""GPTQ weight rounding: the identity Hessian gives round-to-nearest, the blocked Cholesky form equals the
plain optimal-brain-quantizer recursion, the layer error drops below rounding's, and on a tiny XLM-R every
quantized weight is re-rounded onto its own grid (train.py's method.gptq: test_bias_correction; its
refusals: test_bad_inputs)."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny import xlmr

from sdq.calib import calibrate, gptq
from sdq.calib.calibrate import each_call
from sdq.calib.gptq import grid_of, round_columns, towards
from sdq.calib.gptq_teacher import call_order, gptq_teacher
from sdq.quant import QuantConfig, QuantizerConfig, prepare
from sdq.quant.modules import QuantLinear
from sdq.quant.prepare import set_phase
from sdq.quant.uniform import UniformQuantizer

GRANULARITIES = [("channel", {}), ("group", {"group_size": 8}), ("tensor", {})]


def quantizer(w: torch.Tensor, gran: str, bits: int = 3, **kw) -> UniformQuantizer:
    q = UniformQuantizer(QuantizerConfig(bits=bits, granularity=gran, symmetric=False, **kw), tuple(w.shape))
    q.calibrate_(w)
    q.set_phase("frozen")
    return q.eval()


def correlated(n: int, cols: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mix = torch.eye(cols) + 0.5 * torch.randn(cols, cols, generator=g)
    return torch.randn(n, cols, generator=g) @ mix  # (n, cols) strongly correlated inputs


def token_batches(n: int) -> list[dict]:
    """n batches of 4 random 9-token sequences for the tiny XLM-R, no padding."""
    return [{"input_ids": torch.randint(3, 120, (4, 9)), "attention_mask": torch.ones(4, 9, dtype=torch.long)}
            for _ in range(n)]


def obq_reference(w: torch.Tensor, h: torch.Tensor, q: UniformQuantizer, damp: float) -> torch.Tensor:
    """Column by column: round column i, then move its error onto the remaining columns F with the inverse
    of H restricted to F, recomputed each step (Frantar & Alistarh 2022, eq. 3)."""
    w, h = w.clone().double(), h.clone().double()
    h += torch.eye(len(h), dtype=h.dtype) * damp * torch.diagonal(h).mean()
    scale, zp, qmin, qmax = (t.double() for t in grid_of(q, w.float()))
    out = torch.empty_like(w)
    for i in range(w.shape[1]):
        f = list(range(i, w.shape[1]))
        hinv = torch.linalg.inv(h[f][:, f])  # (|F|, |F|)
        out[:, i] = (torch.round(w[:, i] / scale[:, i]) + zp[:, i]).clamp(qmin[:, i], qmax[:, i]).sub(zp[:, i]) * scale[:, i]
        e = (w[:, i] - out[:, i]) / hinv[0, 0]  # (R,)
        w[:, f] -= e[:, None] * hinv[0][None, :]
    return out


@pytest.mark.parametrize("gran,kw", GRANULARITIES)
def test_identity_hessian_is_round_to_nearest(gran, kw):
    w = torch.randn(6, 16, generator=torch.Generator().manual_seed(0))
    q = quantizer(w, gran, **kw)
    torch.testing.assert_close(round_columns(w, torch.eye(16), grid_of(q, w)).float(), q(w), rtol=0, atol=1e-6)


@pytest.mark.parametrize("gran,kw", GRANULARITIES)
@pytest.mark.parametrize("block", [1, 5, 128])
def test_blocked_cholesky_form_equals_the_obq_recursion(gran, kw, block):
    w = torch.randn(6, 16, generator=torch.Generator().manual_seed(1))
    x = correlated(200, 16)
    q = quantizer(w, gran, **kw)
    got = round_columns(w, x.T @ x, grid_of(q, w), damp=0.01, block=block)
    torch.testing.assert_close(got, obq_reference(w, x.T @ x, q, 0.01), rtol=0, atol=1e-9)


@pytest.mark.parametrize("gran,kw", GRANULARITIES)
def test_output_error_below_rounding_and_every_value_on_the_grid(gran, kw):
    w = torch.randn(32, 48, generator=torch.Generator().manual_seed(2))
    x = correlated(1000, 48, seed=3)
    q = quantizer(w, gran, bits=4, **kw)
    out = round_columns(w, x.T @ x, grid_of(q, w)).float()
    torch.testing.assert_close(q(out), out, rtol=0, atol=1e-6)  # codes of the same scales and zero points
    rtn, err = ((w - q(w)) @ x.T).pow(2).mean(), ((w - out) @ x.T).pow(2).mean()
    assert err < 0.8 * rtn


def test_per_row_bits_are_respected():
    w = torch.randn(4, 16, generator=torch.Generator().manual_seed(4))
    q = quantizer(w, "channel", bits=4)
    q.row_bits.copy_(torch.tensor([2, 4, 4, 8], dtype=torch.int8))
    q._update_scale()
    out = round_columns(w, correlated(300, 16).T @ correlated(300, 16), grid_of(q, w)).float()
    torch.testing.assert_close(q(out), out, rtol=0, atol=1e-6)
    assert len(torch.unique(out[0])) <= 4 < len(torch.unique(out[3]))  # row 0 holds at most 2^2 levels


def test_tiny_xlmr_weights_re_rounded_on_their_grid():
    student = xlmr()
    prepare(student, QuantConfig.from_dict({"weight": {"bits": 3, "granularity": "channel"},
                                            "act": {"bits": 8, "symmetric": False}, "skip": ["classifier"]}))
    data = token_batches(3)
    with pytest.raises(ValueError, match="call calibrate"):
        gptq(student, data)
    calibrate(student, data, len(data))
    linears = {n: m for n, m in student.named_modules() if isinstance(m, QuantLinear)}
    before = {n: m.weight.detach().clone() for n, m in linears.items()}
    inputs = {n: [] for n in linears}  # what each weight multiplies: its input after the act quantizer
    each_call(student, data, linears, lambda n, m, x, out: inputs[n].append(m.act_quantizer(x) if m.act_quantizer else x))
    rtn = {n: m.weight_quantizer(m.weight).detach() for n, m in linears.items() if m.weight_quantizer is not None}
    assert gptq(student, data) == 12  # 2 layers x (q, k, v, attn out, ffn in, ffn out); classifier FP
    err = {"rtn": 0.0, "gptq": 0.0}
    for n, m in linears.items():
        if n not in rtn:
            assert torch.equal(m.weight, before[n]), n
            continue
        assert not torch.equal(m.weight, before[n]), n
        torch.testing.assert_close(m.weight_quantizer(m.weight), m.weight, rtol=0, atol=1e-6)
        x = torch.cat(inputs[n])  # (N, in)
        err["rtn"] += float(((before[n] - rtn[n]) @ x.T).pow(2).sum())
        err["gptq"] += float(((before[n] - m.weight.detach()) @ x.T).pow(2).sum())
    assert err["gptq"] < 0.8 * err["rtn"]  # the layers' output error on the calibration tokens


def test_weights_off_a_uniform_grid_keep_their_rounding_and_are_named(caplog):
    student = xlmr()
    prepare(student, QuantConfig.from_dict({"weight": {"bits": 4, "granularity": "channel"}, "act": None,
                                            "skip": ["classifier"],
                                            "overrides": {r"intermediate\.dense": {"scheme": "kmeans"}}}))
    data = token_batches(2)
    calibrate(student, data, len(data))
    fc1 = {n: m.weight.detach().clone() for n, m in student.named_modules() if n.endswith("intermediate.dense")}
    with caplog.at_level("WARNING", logger="sdq.calib.gptq"):
        assert gptq(student, data) == 10  # 12 quantized Linears, the 2 k-means fc1 weights left alone
    assert "2 quantized Linear weights not on a uniform grid keep their rounding" in caplog.text
    assert all(n in caplog.text for n in fc1)
    modules = dict(student.named_modules())
    assert all(torch.equal(modules[n].weight, w) for n, w in fc1.items())


@pytest.mark.parametrize("gran,kw", GRANULARITIES)
def test_latent_columns_round_to_the_gptq_codes(gran, kw):
    w = torch.randn(6, 32, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    q = quantizer(w.float(), gran, bits=2, **kw)
    grid = grid_of(q, w.float())
    x = correlated(400, 32).double()
    rounded = round_columns(w, x.T @ x, grid)
    latent = round_columns(w, x.T @ x, grid, latent=True)
    scale, zp, qmin, qmax = (t.double() for t in grid)
    torch.testing.assert_close(((latent / scale).round() + zp).clamp(qmin, qmax).sub(zp).mul(scale), rounded,
                               rtol=0, atol=1e-12)
    assert (latent - rounded).abs().max() > 0.1 * scale.min()  # off the grid points: QAT's sub-step position


def test_lsq_student_before_qat_starts_from_latent_weights_with_gptq_codes():
    """GPTQ as QAT's starting point (method=sdq method.gptq=true): LSQ steps stay; the weights keep their
    latent positions and fake-quantize to what a frozen (PTQ) student's GPTQ puts on the grid."""
    student = xlmr()
    prepare(student, QuantConfig.from_dict({"weight": {"bits": 2, "scheme": "lsq", "granularity": "group",
                                                       "group_size": 16}, "act": {"bits": 8}, "skip": ["classifier"]}))
    data = token_batches(2)
    calibrate(student, data, len(data), learn=True)
    frozen = copy.deepcopy(student)
    set_phase(frozen, "frozen")
    linears = {n: m for n, m in student.named_modules() if isinstance(m, QuantLinear) and m.weight_quantizer}
    steps = {n: m.weight_quantizer.scale.detach().clone() for n, m in linears.items()}
    assert all(isinstance(m.weight_quantizer.scale, torch.nn.Parameter) for m in linears.values())
    assert gptq(student, data) == gptq(frozen, data) == 12
    on_grid = dict(frozen.named_modules())
    for n, m in linears.items():
        assert torch.equal(m.weight_quantizer.scale, steps[n]), n
        assert not torch.equal(m.weight, on_grid[n].weight), n
        torch.testing.assert_close(m.weight_quantizer(m.weight), on_grid[n].weight, rtol=0, atol=1e-6)


def test_towards_is_the_least_squares_map_from_student_to_teacher_inputs():
    """GPTQ towards the teacher rounds W* = W + W (G - H) H^-1: exactly the least-squares weight taking the
    student's inputs X_q to the teacher's outputs X_t W^T (undamped), and W itself when the inputs agree."""
    w = torch.randn(5, 12, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    xq = correlated(300, 12).double()
    xt = xq + 0.3 * correlated(300, 12, seed=1).double() + 0.2  # carried error, partly linear in xq
    ref = torch.linalg.lstsq(xq, xt @ w.T).solution.T  # (5, 12)
    torch.testing.assert_close(towards(w, xq.T @ xq, xt.T @ xq, damp=0.0), ref, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(towards(w, xq.T @ xq, xq.T @ xq), w, rtol=0, atol=1e-12)  # the damped form
    # W G (H + damp)^-1 would shrink W here; W + W (G - H) H^-1 leaves it as it is
    assert (towards(w, xq.T @ xq, xt.T @ xq) - w).abs().max() > 0.1


def test_call_order_groups_the_layers_that_share_an_input():
    student = xlmr()
    prepare(student, QuantConfig.from_dict({"weight": {"bits": 4}, "act": {"bits": 8}, "skip": ["classifier"]}))
    names = [n for n, m in student.named_modules() if isinstance(m, QuantLinear)]
    groups = call_order(student, token_batches(1)[0], names[::-1])  # asked in reverse: the forward decides
    def per_layer(i: int) -> list[list[str]]:
        at = f"roberta.encoder.layer.{i}."
        return [[at + f"attention.self.{p}" for p in ("query", "key", "value")], [at + "attention.output.dense"],
                [at + "intermediate.dense"], [at + "output.dense"]]

    assert [sorted(g) for g in groups] == [sorted(g) for i in range(2) for g in per_layer(i)]


def test_towards_the_teacher_layer_by_layer_brings_the_student_closer_to_it():
    """gptq_teacher: each layer rounded in call order, on the student below it already rounded, towards
    the teacher's output of it; the student's last hidden states on the calibration tokens end closer to the
    teacher's than with GPTQ towards its own float outputs (3-bit weights, 4-bit activations)."""
    teacher = xlmr().eval()
    cfg = {"weight": {"bits": 3, "granularity": "channel"}, "act": {"bits": 4, "symmetric": False},
           "skip": ["classifier"]}
    data = token_batches(6)

    @torch.no_grad()
    def last(model) -> torch.Tensor:  # (B*T, d) over the batches
        return torch.cat([model(**b, output_hidden_states=True).hidden_states[-1].flatten(0, 1) for b in data])

    err = {}
    for towards_teacher in (False, True):
        student = copy.deepcopy(teacher)
        prepare(student, QuantConfig.from_dict(cfg))
        calibrate(student, data, len(data))
        rtn = (last(student) - last(teacher)).pow(2).mean()
        assert (gptq_teacher(student, teacher, data) if towards_teacher else gptq(student, data)) == 12
        err[towards_teacher] = float((last(student) - last(teacher)).pow(2).mean() / rtn)
        for m in student.modules():
            if isinstance(m, QuantLinear) and m.weight_quantizer is not None:
                torch.testing.assert_close(m.weight_quantizer(m.weight), m.weight, rtol=0, atol=1e-6)  # on the grid
    assert err[True] < 0.8 * err[False] < 0.8, err


def test_towards_a_teacher_without_the_students_layers_is_refused():
    student = xlmr()
    prepare(student, QuantConfig.from_dict({"weight": {"bits": 4}, "act": None, "skip": ["classifier"]}))
    data = token_batches(1)
    calibrate(student, data, 1)
    with pytest.raises(ValueError, match="the teacher has no FP Linear 'roberta.encoder.layer.0.attention.self.query'"):
        gptq_teacher(student, torch.nn.Sequential(), data)
    with pytest.raises(ValueError, match="no FP Linear"):
        gptq_teacher(student, student, data)  # the student itself: quantized Linears


def test_towards_the_teacher_with_biases_matches_every_layers_mean_output():
    """gptq_teacher(bias=True): each bias is the intercept of the same least squares, so on the calibration
    tokens every quantized Linear's mean output equals the teacher's (its inputs are fixed once it is done:
    only the layers below feed it); the last hidden states end closer to the teacher than without biases."""
    teacher = xlmr().eval()
    cfg = {"weight": {"bits": 3, "granularity": "channel"}, "act": {"bits": 4, "symmetric": False},
           "skip": ["classifier"]}
    data = token_batches(6)
    err = {}
    for bias in (False, True):
        student = copy.deepcopy(teacher)
        prepare(student, QuantConfig.from_dict(cfg))
        calibrate(student, data, len(data))
        assert gptq_teacher(student, teacher, data, bias=bias) == 12
        means = {}
        for who, model in (("student", student), ("teacher", teacher)):
            mods = {n: m for n, m in model.named_modules() if n.startswith("roberta") and isinstance(m, torch.nn.Linear)}
            sums = {n: [] for n in mods}
            each_call(model, data, mods, lambda n, m, x, out, sums=sums: sums[n].append(out))
            means[who] = {n: torch.cat(v).mean(0) for n, v in sums.items()}
        gap = max(float((means["student"][n] - means["teacher"][n]).abs().max()) for n in means["teacher"])
        assert (gap < 1e-4) if bias else (gap > 1e-2), gap
        with torch.no_grad():
            err[bias] = sum(float((student(**b, output_hidden_states=True).hidden_states[-1]
                                   - teacher(**b, output_hidden_states=True).hidden_states[-1]).pow(2).mean()) for b in data)
    assert err[True] < err[False], err


def test_towards_the_teacher_twice_changes_nothing():
    """The targets are the teacher's weights and biases, not the student's current ones: a second call finds
    the same inputs at every layer and writes the same codes and biases."""
    teacher = xlmr().eval()
    student = copy.deepcopy(teacher)
    prepare(student, QuantConfig.from_dict({"weight": {"bits": 3, "granularity": "channel"},
                                            "act": {"bits": 4, "symmetric": False}, "skip": ["classifier"]}))
    data = token_batches(3)
    calibrate(student, data, len(data))
    gptq_teacher(student, teacher, data, bias=True)
    first = {k: v.clone() for k, v in student.state_dict().items()}
    gptq_teacher(student, teacher, data, bias=True)
    for k, v in student.state_dict().items():
        torch.testing.assert_close(v, first[k], rtol=0, atol=1e-6, msg=k)
