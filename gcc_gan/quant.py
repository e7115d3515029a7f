"""Linear int8 quantization: the affine equations, observers that choose the clipping range, and
the per-layer decision (`LayerQuant`) that `quantize_int8` annotates and lowering reads.

The equations (Anycost-GAN report, section 4.2), for a real range [r_min, r_max] and an integer
range [q_min, q_max]:
    scale      = (r_max - r_min) / (q_max - q_min)
    zero_point = round(q_min - r_min / scale)                 clamped to [q_min, q_max]
    q          = clamp(round(r / scale) + zero_point, q_min, q_max)
    r_hat      = (q - zero_point) * scale
Symmetric (int8 weights): r_max = -r_min = max|r|, q in [-127, 127], zero_point = 0; with 7-bit
weights q in [-63, 63] (for runtimes whose int8 kernels saturate int16 pair sums, see
`gcc_gan.runtime.int8_pairs_saturate`). The range always includes 0, so zero padding and ReLU
zeros are exact.

Observers pick [r_min, r_max] from calibration values: `minmax` (the extremes), `percentile`
(clip the tails at p and 100 - p), `mse` (the clipping that minimises the mean squared
quantization error over a grid of candidate ranges). They keep a bounded random sample of the
values seen, so their memory does not grow with the calibration set.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

SAMPLE_SIZE = 1 << 20
OBSERVERS = ("minmax", "percentile", "mse")


@dataclass(frozen=True)
class QParams:
    scale: np.ndarray       # one per tensor, or one per channel along `axis`
    zero_point: np.ndarray
    dtype: str              # "int8" | "uint8"
    axis: int | None = None
    bits: int = 8           # symmetric int8 weights may use 7 (q in [-63, 63])

    @property
    def qrange(self) -> tuple[int, int]:
        return qrange(self.dtype, symmetric=self.dtype == "int8", bits=self.bits)


def qrange(dtype: str, symmetric: bool, bits: int = 8) -> tuple[int, int]:
    if dtype == "uint8":
        return 0, 255
    q_max = 2 ** (bits - 1) - 1
    return (-q_max, q_max) if symmetric else (-128, 127)


def affine_qparams(r_min: float, r_max: float, dtype: str) -> QParams:
    """Asymmetric parameters for the range [r_min, r_max] (widened to include 0)."""
    r_min, r_max = min(r_min, 0.0), max(r_max, 0.0)
    q_min, q_max = qrange(dtype, symmetric=False)
    scale = max(r_max - r_min, 1e-12) / (q_max - q_min)
    zero_point = int(np.clip(round(q_min - r_min / scale), q_min, q_max))
    return QParams(np.array([scale], np.float32), np.array([zero_point]), dtype)


def symmetric_qparams(weight: torch.Tensor, per_channel: bool, axis: int = 0,
                      bits: int = 8) -> QParams:
    """int8 symmetric parameters for a weight, per tensor or per output channel; `bits` 7 uses
    half the int8 range."""
    w = weight.detach().float()
    if per_channel:
        amax = w.movedim(axis, 0).reshape(w.shape[axis], -1).abs().amax(dim=1).numpy()
    else:
        amax = np.array([w.abs().max().item()])
    _, q_max = qrange("int8", symmetric=True, bits=bits)
    scale = np.maximum(amax, 1e-12).astype(np.float32) / q_max
    return QParams(scale, np.zeros_like(scale, dtype=np.int64), "int8",
                   axis if per_channel else None, bits)


def fake_quantize(x: torch.Tensor, qp: QParams) -> torch.Tensor:
    """quantize then dequantize: what the int8 kernel sees, in float."""
    q_min, q_max = qp.qrange
    shape = [1] * x.dim()
    if qp.axis is not None:
        shape[qp.axis] = -1
    scale = torch.as_tensor(qp.scale, dtype=x.dtype).reshape(shape)
    zp = torch.as_tensor(qp.zero_point, dtype=x.dtype).reshape(shape)
    return (torch.clamp(torch.round(x / scale) + zp, q_min, q_max) - zp) * scale


class Observer:
    """Collects a bounded sample of a tensor's values and picks its clipping range."""

    def __init__(self, method: str = "minmax", percentile: float = 99.99, seed: int = 0):
        if method not in OBSERVERS:
            raise ValueError(f"observer must be one of {OBSERVERS}, got {method!r}")
        self.method, self.percentile = method, percentile
        self.lo, self.hi = np.inf, -np.inf
        self._sample: list[np.ndarray] = []
        self._rng = np.random.default_rng(seed)

    def update(self, x: torch.Tensor) -> None:
        values = x.detach().float().reshape(-1).numpy()
        self.lo, self.hi = min(self.lo, values.min()), max(self.hi, values.max())
        if values.size > SAMPLE_SIZE // 4:
            values = self._rng.choice(values, SAMPLE_SIZE // 4, replace=False)
        self._sample.append(values)
        if sum(s.size for s in self._sample) > SAMPLE_SIZE:
            merged = np.concatenate(self._sample)
            self._sample = [self._rng.choice(merged, SAMPLE_SIZE, replace=False)]

    def range(self) -> tuple[float, float]:
        if self.method == "minmax" or not self._sample:
            return float(self.lo), float(self.hi)
        values = np.concatenate(self._sample)
        if self.method == "percentile":
            return (float(np.percentile(values, 100 - self.percentile)),
                    float(np.percentile(values, self.percentile)))
        return _mse_range(values, float(self.lo), float(self.hi))

    def qparams(self, dtype: str) -> QParams:
        return affine_qparams(*self.range(), dtype)


def _mse_range(values: np.ndarray, lo: float, hi: float, steps: int = 64) -> tuple[float, float]:
    """Shrink [lo, hi] toward 0 by a common factor; keep the factor with the least error."""
    best, best_err = (lo, hi), np.inf
    for frac in np.linspace(1.0, 0.2, steps):
        qp = affine_qparams(lo * frac, hi * frac, "uint8")
        x = torch.from_numpy(values)
        err = float((fake_quantize(x, qp) - x).pow(2).mean())
        if err < best_err:
            best, best_err = (lo * frac, hi * frac), err
    return best


QUANT_KEY = "gcc_gan.quant"  # node.meta key of a conv's LayerQuant


@dataclass(frozen=True)
class LayerQuant:
    node: str
    module: str
    weight: str                 # get_attr target of the weight (the ONNX initializer name)
    input: str                  # fx node feeding the conv (the ONNX tensor name)
    weight_qparams: QParams
    input_qparams: QParams
    output_qparams: QParams
    sensitivity_psnr: float     # output PSNR with only this layer quantized (nan: not measured)


def quant_plan(gm) -> tuple[LayerQuant, ...]:
    """The int8 decisions annotated on a program's nodes (empty when it was not quantized)."""
    return tuple(n.meta[QUANT_KEY] for n in gm.graph.nodes if QUANT_KEY in n.meta)


ADD_QUANT_KEY = "gcc_gan.quant_add"  # node.meta key of an int8 add's AddQuant


@dataclass(frozen=True)
class AddQuant:
    """An elementwise add of two activations run in int8 (ONNX Runtime: QLinearAdd)."""
    node: str
    module: str
    inputs: tuple[str, str]                   # the fx nodes added (the ONNX tensor names)
    input_qparams: tuple[QParams, QParams]
    output_qparams: QParams


def add_plan(gm) -> tuple[AddQuant, ...]:
    return tuple(n.meta[ADD_QUANT_KEY] for n in gm.graph.nodes if ADD_QUANT_KEY in n.meta)
