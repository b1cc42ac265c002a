"""CUDA checks (skipped without a GPU): device placement, exact disable/round trip, XLM-R-base-size timing."""

import copy
import time

import pytest
import torch
from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification

from sdq.quant import QuantConfig, prepare, set_enabled, set_phase

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

CFGS = {
    "w8a8_attn": {"weight": {"bits": 8, "granularity": "channel"},
                  "act": {"bits": 8, "symmetric": False, "observer": "ema"},
                  "embedding": {"bits": 8, "granularity": "row"},
                  "attention": {"bits": 8, "symmetric": False}},
    "w4_lsq_group": {"weight": {"bits": 4, "scheme": "lsq", "granularity": "group", "group_size": 32},
                     "embedding": {"bits": 4, "granularity": "row", "observer": "mse"}},
    "kmeans4": {"weight": {"bits": 4, "scheme": "kmeans", "granularity": "channel"},
                "embedding": {"bits": 4, "scheme": "kmeans", "granularity": "row"}},
    "binary2": {"weight": {"bits": 2, "scheme": "binary", "granularity": "channel"},
                "embedding": {"bits": 2, "scheme": "binary", "granularity": "row"}},
}


def _model(size: dict) -> XLMRobertaForSequenceClassification:
    torch.manual_seed(0)
    return XLMRobertaForSequenceClassification(XLMRobertaConfig(**size, num_labels=3)).cuda().eval()


def _sync_time(fn) -> tuple[object, float]:
    torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return out, time.perf_counter() - t


def _check(size: dict, batch: tuple[int, int], report: bool) -> None:
    fp = _model(size)
    ids = torch.randint(3, size["vocab_size"], batch, device="cuda")
    mask = torch.ones_like(ids)
    mask[0, batch[1] // 2:] = 0
    with torch.no_grad():
        ref, t_fp = _sync_time(lambda: fp(input_ids=ids, attention_mask=mask).logits)
        ref, t_fp = _sync_time(lambda: fp(input_ids=ids, attention_mask=mask).logits)
    fp.train()
    _, t_fp_step = _sync_time(lambda: fp(input_ids=ids, attention_mask=mask).logits.sum().backward())
    fp.eval().zero_grad(set_to_none=True)
    if report:
        print(f"\nfp32: fwd {t_fp * 1e3:.0f}ms train-step {t_fp_step * 1e3:.0f}ms")
    for name, d in CFGS.items():
        m = copy.deepcopy(fp)
        rep, t_prep = _sync_time(lambda m=m, d=d: prepare(m, QuantConfig.from_dict(copy.deepcopy(d))))
        assert all(b.device.type == "cuda" for b in m.buffers())
        with torch.no_grad():
            _, t_cal = _sync_time(lambda m=m: m(input_ids=ids, attention_mask=mask))
            set_phase(m, "learn")
            y, t_fwd = _sync_time(lambda m=m: m(input_ids=ids, attention_mask=mask).logits)
            set_enabled(m, False)
            assert torch.equal(m(input_ids=ids, attention_mask=mask).logits, ref)
            set_enabled(m, True)
        m.train()
        _, t_step = _sync_time(lambda m=m: m(input_ids=ids, attention_mask=mask).logits.sum().backward())
        m.eval()
        fresh = _model(size)
        prepare(fresh, QuantConfig.from_dict(copy.deepcopy(d)))
        fresh.load_state_dict(m.state_dict())
        with torch.no_grad():
            y = m(input_ids=ids, attention_mask=mask).logits
            assert torch.equal(fresh(input_ids=ids, attention_mask=mask).logits, y)
        if report:
            print(f"\n{name}: prepare {t_prep:.2f}s calibrate-fwd {t_cal * 1e3:.0f}ms fwd {t_fwd * 1e3:.0f}ms "
                  f"train-step {t_step * 1e3:.0f}ms bits/param {rep.effective_bits:.2f} "
                  f"size {rep.size_bytes / 2**20:.1f} MiB (fp32 {rep.fp32_size_bytes / 2**20:.1f})")
        del m, fresh


def test_cuda_tiny():
    _check({"vocab_size": 120, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
            "intermediate_size": 64, "max_position_embeddings": 40}, (3, 9), report=False)


@pytest.mark.slow
def test_cuda_xlmr_base_size():
    _check({"vocab_size": 250002, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
            "intermediate_size": 3072, "max_position_embeddings": 514}, (32, 128), report=True)
