"""Bit packing of integer codes and (de)quantization of packed tensors, numpy/torch only (no sdq.quant).

Codes are stored unsigned (``codes - offset`` in [0, 2^bits)) at their real bit-width: 8 bits one per
byte, 4 bits two per byte (low nibble first), 2 bits four per byte, 1 bit eight per byte; 3/5/6/7 bits as
a little-endian bit stream. Params follow sdq.quant's grouped layout (G rows, see ``grouped_shape``).

>>> packed = pack_bits(np.array([1, 2, 3, 0]), 2)          # one byte
>>> unpack_bits(packed, 2, 4)                               # array([1, 2, 3, 0], dtype=uint8)
>>> w = dequantize(meta, arrays)                            # float32 torch tensor, bit-exact
"""

from __future__ import annotations

import numpy as np
import torch

_FAST = {8: 1, 4: 2, 2: 4, 1: 8}  # values per byte


def pack_bits(codes: np.ndarray, bits: int) -> np.ndarray:
    """Flat unsigned codes (< 2^bits) -> uint8 bytes, ceil(n * bits / 8) of them."""
    c = np.asarray(codes).reshape(-1)
    if c.size and (int(c.min()) < 0 or int(c.max()) >= 1 << bits):
        raise ValueError(f"codes out of range for {bits} bits: [{c.min()}, {c.max()}]")
    c = c.astype(np.uint8)
    if bits in _FAST:
        per = _FAST[bits]
        pad = (-c.size) % per
        c = np.concatenate([c, np.zeros(pad, np.uint8)]).reshape(-1, per)  # (n/per, per)
        out = np.zeros(c.shape[0], np.uint8)
        for j in range(per):
            out |= c[:, j] << np.uint8(j * bits)
        return out
    bitmat = (c[:, None] >> np.arange(bits, dtype=np.uint8)) & 1  # (n, bits) little-endian
    return np.packbits(bitmat.reshape(-1), bitorder="little")


def unpack_bits(packed: np.ndarray, bits: int, n: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: the first ``n`` codes as uint8."""
    p = np.asarray(packed, np.uint8).reshape(-1)
    if bits in _FAST:
        per = _FAST[bits]
        mask = np.uint8((1 << bits) - 1)
        out = np.stack([(p >> np.uint8(j * bits)) & mask for j in range(per)], 1)  # (bytes, per)
        return out.reshape(-1)[:n]
    bitmat = np.unpackbits(p, bitorder="little")[: n * bits].reshape(n, bits)
    return (bitmat << np.arange(bits, dtype=np.uint8)).sum(1).astype(np.uint8)


def grouped_shape(shape: list[int], granularity: str, group_size: int | None) -> tuple[int, int]:
    """(G, n) of sdq.quant's grouped view of a weight ``shape``."""
    numel = int(np.prod(shape))
    if granularity == "tensor":
        return 1, numel
    if granularity == "group":
        return numel // int(group_size), int(group_size)
    return int(shape[0]), numel // int(shape[0])


def pack_tensor(name: str, codes: torch.Tensor, params: dict) -> tuple[dict, dict[str, np.ndarray]]:
    """(json meta, arrays) for one quantized weight given ``quantize_int``'s codes and params."""
    shape = list(codes.shape)
    g, n = grouped_shape(shape, params["granularity"], params.get("group_size"))
    c2d = codes.reshape(g, n).to(torch.int32)
    meta = {"scheme": params["scheme"], "shape": shape, "granularity": params["granularity"],
            "group_size": params.get("group_size")}
    arrays: dict[str, np.ndarray] = {}
    if params["scheme"] in ("uniform", "sign"):
        qmin = torch.as_tensor(params["qmin"]).float()
        qmax = torch.as_tensor(params["qmax"]).float()
        bits = int(np.ceil(np.log2(float(qmax.max() - qmin.min()) + 1))) if params["scheme"] == "uniform" else 1
        offset = qmin.reshape(-1, 1) if qmin.numel() > 1 and bool((qmin != qmin.reshape(-1)[0]).any()) \
            else qmin.reshape(-1)[:1].reshape(1, 1)  # per-row offsets only for mixed row bits
        unsigned = (c2d - offset.to(torch.int32)).numpy()
        arrays[f"{name}.scale"] = params["scale"].float().reshape(g, 1).numpy()
        zp = params["zero_point"].float().reshape(g, 1)
        if bool(zp.any()):
            arrays[f"{name}.zero_point"] = zp.numpy()
        if offset.numel() > 1:
            arrays[f"{name}.offset"] = offset.numpy()
        else:
            meta["offset"] = float(offset)
    else:
        k = params["codebook"].shape[1] if params["scheme"] == "kmeans" else 2 ** params["alpha"].shape[1]
        bits = int(np.log2(k))
        unsigned = c2d.numpy()
        key = "codebook" if params["scheme"] == "kmeans" else "alpha"
        arrays[f"{name}.{key}"] = params[key].float().contiguous().numpy()
    meta["bits"] = bits
    arrays[f"{name}.codes"] = pack_bits(unsigned, bits)
    return meta, arrays


def codes_of(meta: dict, arrays: dict[str, np.ndarray], name: str) -> torch.Tensor:
    """Signed/unsigned integer codes (G, n) as int32 (``offset`` added back)."""
    g, n = grouped_shape(meta["shape"], meta["granularity"], meta.get("group_size"))
    c = torch.from_numpy(unpack_bits(arrays[f"{name}.codes"], meta["bits"], g * n).astype(np.int32))
    c = c.reshape(g, n)
    if f"{name}.offset" in arrays:
        return c + torch.from_numpy(arrays[f"{name}.offset"]).to(torch.int32)
    return c + int(meta.get("offset", 0))


def binary_table(alpha: torch.Tensor) -> torch.Tensor:
    """(G, 2^B) values of every sign pattern: entry c = sum_i alpha_i * (+1 if bit i of c else -1)."""
    b = alpha.shape[1]
    c = torch.arange(2 ** b)
    signs = ((c[:, None] >> torch.arange(b)) & 1).to(alpha.dtype) * 2 - 1  # (2^B, B)
    return alpha @ signs.t()


def dequantize(meta: dict, arrays: dict[str, np.ndarray], name: str) -> torch.Tensor:
    """The float32 weight of a packed tensor, computed with the same ops as the fake-quantized forward."""
    c2d = codes_of(meta, arrays, name)  # (G, n)
    scheme = meta["scheme"]
    if scheme == "uniform":
        scale = torch.from_numpy(arrays[f"{name}.scale"])
        zp = torch.from_numpy(arrays[f"{name}.zero_point"]) if f"{name}.zero_point" in arrays else None
        out = (c2d.float() - (zp if zp is not None else torch.zeros_like(scale))) * scale
    elif scheme == "sign":
        scale = torch.from_numpy(arrays[f"{name}.scale"])
        out = torch.where(c2d > 0, scale, -scale)
    elif scheme == "kmeans":
        out = torch.from_numpy(arrays[f"{name}.codebook"]).gather(1, c2d.long())
    else:
        out = binary_table(torch.from_numpy(arrays[f"{name}.alpha"])).gather(1, c2d.long())
    return out.reshape(meta["shape"])
