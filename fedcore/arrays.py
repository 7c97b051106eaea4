"""A model's tensors as torch tensors or as numpy arrays, behind one small set of functions.

Why: the wire codec, the global model and the mergeable strategies only cast, view, sum and
check tensors. Written against these functions they serve a numpy model too, and a process that
never touches a torch tensor (a simulation driver of ``NumpyClient``s) never imports torch: its
import alone costs ~500 MB (this CUDA build's libraries and their initialisers).

A value is a numpy array when it is an ``np.ndarray``; anything else is taken for a torch tensor,
and torch is imported the first time one is seen. numpy has no bfloat16: a numpy model's
bfloat16 values exist only as bits on the wire (:func:`bf16_bits`), and decode to float32
exactly (:func:`widen_bf16`).
"""
from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal, Union, cast

import numpy as np

if TYPE_CHECKING:
    import torch

    Array = Union[torch.Tensor, np.ndarray]
else:
    Array = Any

#: what a decoder builds: torch tensors (the default) or numpy arrays
Kind = Literal["torch", "numpy"]

#: bytes per element of every dtype the wire carries (README section 5)
ITEMSIZE: dict[str, int] = {
    "float32": 4, "float16": 2, "bfloat16": 2, "float64": 8, "int64": 8, "int32": 4, "int16": 2, "int8": 1,
    "uint8": 1, "bool": 1,
}
NUMPY_NAMES: dict[np.dtype[Any], str] = {
    np.dtype(name): name for name in ITEMSIZE if name != "bfloat16"
}
#: how a numpy decoder holds each wire dtype (bfloat16's bits as uint16)
NUMPY_DTYPES: dict[str, np.dtype[Any]] = {**{v: k for k, v in NUMPY_NAMES.items()}, "bfloat16": np.dtype(np.uint16)}


@functools.cache
def torch_dtypes() -> dict[str, torch.dtype]:
    """Wire dtype name → torch dtype (imports torch)."""
    import torch

    return {
        "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64,
        "int64": torch.int64, "int32": torch.int32, "int16": torch.int16, "int8": torch.int8, "uint8": torch.uint8,
        "bool": torch.bool,
    }


@functools.cache
def torch_names() -> dict[torch.dtype, str]:
    """torch dtype → wire dtype name (imports torch)."""
    return {v: k for k, v in torch_dtypes().items()}


def kind_of(state: Mapping[str, Array]) -> Kind:
    """``numpy`` when every value is a numpy array (an empty model too), else ``torch``."""
    return "numpy" if all(isinstance(v, np.ndarray) for v in state.values()) else "torch"


def dtype_name(x: Array) -> str | None:
    """The wire name of the value's dtype, or None for one the wire cannot carry."""
    if isinstance(x, np.ndarray):
        return NUMPY_NAMES.get(x.dtype)
    return torch_names().get(x.dtype)


def is_floating(x: Array) -> bool:
    if isinstance(x, np.ndarray):
        return x.dtype.kind == "f"
    return bool(x.is_floating_point())


def shape_of(x: Array) -> tuple[int, ...]:
    return tuple(int(d) for d in x.shape)


def nbytes(x: Array) -> int:
    if isinstance(x, np.ndarray):
        return int(x.nbytes)
    return int(x.numel() * x.element_size())


def clone(x: Array) -> Array:
    """An independent copy (a torch tensor detached from any graph)."""
    if isinstance(x, np.ndarray):
        return x.copy()
    return x.detach().clone()


def clone_state(state: Mapping[str, Array]) -> dict[str, Array]:
    return {k: clone(v) for k, v in state.items()}


def all_finite(x: Array) -> bool:
    """No NaN/Inf in a floating value (others are always finite). A finite sum proves it in one
    reduction; a non-finite sum (NaN/Inf, or an overflow of large values) gets the exact check."""
    if isinstance(x, np.ndarray):
        if x.dtype.kind != "f":
            return True
        return bool(np.isfinite(x.sum())) or bool(np.isfinite(x).all())
    if not x.is_floating_point():
        return True
    import torch

    return bool(torch.isfinite(x.sum())) or bool(torch.isfinite(x).all())


def bf16_bits(a: np.ndarray) -> np.ndarray:
    """float32 values rounded to bfloat16, ties to even, as uint16 bits; NaN becomes 0x7FC0 and
    values past bfloat16's range ±Inf: the same bits torch's cast gives."""
    bits = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    rounded = bits + (np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1)))
    out = (rounded >> np.uint32(16)).astype(np.uint16)
    nan = np.isnan(a)
    if nan.any():
        out[nan.reshape(out.shape)] = 0x7FC0
    return out


def widen_bf16(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bits as the exact float32 values."""
    wide = bits.astype(np.uint32)  # shifted in place: one new array, 0-d included
    wide <<= np.uint32(16)
    return wide.view(np.float32)


def cast_to_wire(x: Array, wire_dtype: str) -> Array:
    """A float value in a wire float dtype (a numpy bfloat16 as its uint16 bits); the value
    itself when it already is that dtype."""
    if isinstance(x, np.ndarray):
        if wire_dtype == "bfloat16":
            return bf16_bits(x)
        target = NUMPY_DTYPES[wire_dtype]
        if x.dtype == target:
            return x
        with np.errstate(over="ignore"):  # past float16's range is ±Inf, as torch casts it
            return x.astype(target)
    return x.to(torch_dtypes()[wire_dtype])


def flat_bytes(x: Array) -> memoryview:
    """The value's bytes in C order (copied only when it is not contiguous)."""
    if isinstance(x, np.ndarray):
        return np.ascontiguousarray(x).reshape(-1).view(np.uint8).data
    t = x.detach().reshape(-1).contiguous()
    return t.view(torch_dtypes()["uint8"]).numpy().data


def from_buffer(buf: bytes | memoryview, dtype: str, count: int, offset: int, kind: Kind) -> Array:
    """A read-only value over ``count`` elements of ``buf`` from byte ``offset`` (no copy)."""
    if kind == "numpy":
        return np.frombuffer(buf, dtype=NUMPY_DTYPES[dtype], count=count, offset=offset)
    import warnings

    import torch

    tdt = torch_dtypes()[dtype]
    if count == 0:
        return torch.empty(0, dtype=tdt)
    with warnings.catch_warnings():  # read-only buffer: every caller copies or casts before use
        warnings.simplefilter("ignore", UserWarning)
        return torch.frombuffer(buf, dtype=tdt, count=count, offset=offset)


def from_wire(x: Array, wire_dtype: str, dtype: str) -> Array:
    """A decoded value (a read-only view in ``wire_dtype``) as a writable copy in ``dtype``."""
    if isinstance(x, np.ndarray):
        if wire_dtype == "bfloat16":
            x = widen_bf16(x)  # a new array: float32 needs no second copy
            if dtype == "float32":
                return x
        if dtype == "bfloat16":
            raise ValueError("numpy has no bfloat16: decode a bfloat16 model as torch tensors")
        return np.array(x, dtype=NUMPY_DTYPES[dtype], copy=True)
    if wire_dtype == "bfloat16" and dtype == "float32":
        import torch

        return torch.from_numpy(widen_bf16(float_bits(x)))
    return x.to(torch_dtypes()[dtype], copy=True)


def to_numpy(x: Array) -> np.ndarray:
    """The value as a numpy array (shared with a CPU torch tensor; bfloat16 widened to float32)."""
    if isinstance(x, (np.ndarray, np.generic)):  # numpy arithmetic on a 0-d array gives a scalar
        return np.asarray(x)
    t = x.detach().cpu()
    return widen_bf16(float_bits(t)) if t.dtype == torch_dtypes()["bfloat16"] else t.numpy()


def float_bits(x: Array) -> np.ndarray:
    """The value as a numpy array shared with it, a bfloat16 tensor as its uint16 bits (numpy's
    :func:`widen_bf16` of those is 4x faster than torch's cast to float32)."""
    if isinstance(x, (np.ndarray, np.generic)):  # numpy arithmetic on a 0-d array gives a scalar
        return np.asarray(x)
    t = x.detach().cpu()
    if t.dtype == torch_dtypes()["bfloat16"]:
        return t.view(torch_dtypes()["int16"]).numpy().view(np.uint16)
    return t.numpy()


def as_kind(state: Mapping[str, Array], kind: Kind) -> dict[str, Array]:
    """The state's values as numpy arrays or as torch tensors, sharing memory where they can (a
    read-only numpy array is copied: torch tensors are writable)."""
    if kind == "numpy":
        return {k: to_numpy(v) for k, v in state.items()}
    return {k: to_torch(v) for k, v in state.items()}


def torch_state(state: Mapping[str, Array]) -> dict[str, torch.Tensor]:
    """The state as torch tensors, for code written in torch (the robust, DP and secure
    aggregation strategies, the server optimisers); numpy arrays are shared, not copied."""
    return cast("dict[str, torch.Tensor]", as_kind(state, "torch"))


def to_torch(x: Array) -> torch.Tensor:
    """The value as a torch tensor (a numpy array's memory shared where it is writable)."""
    if isinstance(x, np.generic):  # numpy arithmetic on a 0-d array gives a scalar
        x = np.asarray(x)
    if not isinstance(x, np.ndarray):
        return x
    import torch

    return torch.from_numpy(np.require(x, requirements="W"))
