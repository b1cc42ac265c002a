"""Bit packing and packed-tensor round trips (exact) for every quantizer scheme."""

import numpy as np
import pytest
import torch

from sdq.export.pack import dequantize, grouped_shape, pack_bits, pack_tensor, unpack_bits
from sdq.quant import QuantizerConfig, make_quantizer


def test_pack_bits_hand_written_bytes():
    assert pack_bits(np.array([1, 2]), 4).tolist() == [0x21]  # low nibble first
    assert pack_bits(np.array([1, 2, 3, 0]), 2).tolist() == [1 | 2 << 2 | 3 << 4]
    assert pack_bits(np.array([1, 0, 1, 1, 0, 0, 0, 1]), 1).tolist() == [0b10001101]
    assert pack_bits(np.array([255, 7]), 8).tolist() == [255, 7]
    # 3 bits as a little-endian stream: 5 = 101, 3 = 011 -> bits 1,0,1,1,1,0 -> 0b011101
    assert pack_bits(np.array([5, 3]), 3).tolist() == [0b011101]


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("n", [1, 7, 64, 1001])
def test_pack_unpack_round_trip(bits, n):
    codes = np.random.default_rng(bits * n).integers(0, 2 ** bits, n)
    packed = pack_bits(codes, bits)
    assert packed.dtype == np.uint8 and packed.size == -(-n * bits // 8)
    assert np.array_equal(unpack_bits(packed, bits, n), codes)


def test_pack_bits_rejects_out_of_range():
    with pytest.raises(ValueError, match="out of range"):
        pack_bits(np.array([4]), 2)


def test_grouped_shape():
    assert grouped_shape([6, 8], "tensor", None) == (1, 48)
    assert grouped_shape([6, 8], "channel", None) == (6, 8)
    assert grouped_shape([6, 8], "row", None) == (6, 8)
    assert grouped_shape([6, 8], "group", 4) == (12, 4)


CASES = [
    {"bits": 8, "granularity": "channel"},
    {"bits": 4, "granularity": "channel"},
    {"bits": 2, "granularity": "channel"},
    {"bits": 2, "granularity": "channel", "narrow_range": True},
    {"bits": 3, "granularity": "tensor"},
    {"bits": 4, "granularity": "group", "group_size": 8},
    {"bits": 8, "granularity": "row", "symmetric": False},
    {"bits": 1, "granularity": "channel"},  # sign: alpha * sign(w)
    {"bits": 4, "scheme": "kmeans", "granularity": "channel"},
    {"bits": 2, "scheme": "kmeans", "granularity": "tensor"},
    {"bits": 2, "scheme": "binary", "granularity": "channel"},
    {"bits": 3, "scheme": "binary", "granularity": "group", "group_size": 16},
]


@pytest.mark.parametrize("cfg", CASES, ids=lambda c: "-".join(f"{v}" for v in c.values()))
def test_packed_tensor_dequantizes_to_fake_quant_exactly(cfg):
    torch.manual_seed(0)
    w = torch.randn(12, 32)
    q = make_quantizer(QuantizerConfig(**cfg), tuple(w.shape))
    q.calibrate_(w)
    q.set_phase("frozen")
    with torch.no_grad():
        ref = q(w)
    codes, params = q.quantize_int(w)
    meta, arrays = pack_tensor("t", codes, params)
    assert meta["bits"] == cfg["bits"]
    assert arrays["t.codes"].nbytes == -(-w.numel() * cfg["bits"] // 8)
    assert torch.equal(dequantize(meta, arrays, "t"), ref)


def test_mixed_row_bits_pack_at_max_bits_exactly():
    torch.manual_seed(1)
    w = torch.randn(6, 16)
    q = make_quantizer(QuantizerConfig(bits=8, granularity="row"), tuple(w.shape))
    q.row_bits.copy_(torch.tensor([2, 4, 8, 2, 4, 8], dtype=torch.int8))
    q.calibrate_(w)
    q.set_phase("frozen")
    with torch.no_grad():
        ref = q(w)
    meta, arrays = pack_tensor("t", *q.quantize_int(w))
    assert meta["bits"] == 8 and "t.offset" in arrays
    assert torch.equal(dequantize(meta, arrays, "t"), ref)
