"""Σ n_k w_k (float64) over numpy arrays: the partial sum a numpy simulation worker builds.

The driver turns it into the strategy's own ``WeightedSum`` (``to_weighted_sum``); the fold is
the same arithmetic as ``fedcore.strategy.fold_weighted``: each n_k·w_k is exact in float64
(a float32 mantissa times a sample count fits in 53 bits), so the sums are bit-identical.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

# The float64 product of one block stays in L2 (512 KiB) instead of a model-sized temporary.
_BLOCK = 1 << 16


class ArraySum:
    def __init__(self) -> None:
        self.sums: dict[str, np.ndarray] = {}
        self.total = 0
        self.count = 0
        self._tmp = np.empty(0, np.float64)

    def __getstate__(self) -> dict[str, object]:
        return {"sums": self.sums, "total": self.total, "count": self.count}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._tmp = np.empty(0, np.float64)

    def add(self, state: Mapping[str, np.ndarray], num_samples: int) -> None:
        if num_samples <= 0:
            raise ValueError("num_samples must be positive")
        for name, a in state.items():
            acc = self.sums.get(name)
            if acc is None:
                acc = self.sums[name] = np.asarray(a, dtype=np.float64).copy()
                acc *= num_samples
            else:
                self._fold(acc.reshape(-1), np.asarray(a).reshape(-1), num_samples)
        self.total += num_samples
        self.count += 1

    def _fold(self, acc: np.ndarray, src: np.ndarray, n: int) -> None:
        if self._tmp.size < min(_BLOCK, src.size):
            self._tmp = np.empty(min(_BLOCK, src.size), np.float64)
        for i in range(0, src.size, _BLOCK):  # widen, scale, add: each a plain SIMD loop
            j = min(src.size, i + _BLOCK)
            tmp = self._tmp[: j - i]
            np.copyto(tmp, src[i:j])
            np.multiply(tmp, n, out=tmp)
            np.add(acc[i:j], tmp, out=acc[i:j])
