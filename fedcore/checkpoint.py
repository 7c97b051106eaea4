"""Checkpoint of the global model and federation state after every round, and resume.

Written so a crash at any point leaves a consistent pair: the model file is written first
under a round-specific name, then ``state.json`` (atomically) names it, then old models go.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedcore import wire
from fedcore.arrays import Array, Kind
from fedcore.constants import CHECKPOINT_STATE
from fedcore.errors import PayloadError


def atomic_write(path: Path, data: bytes) -> None:
    """Write-then-rename so readers never see a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(directory: Path, model: Mapping[str, Array], state: Mapping[str, Any]) -> None:
    """Save the global model (lossless fp32) and the federation state for ``state['round']``."""
    model_name = f"global_r{int(state['round']):05d}.fcw"
    atomic_write(directory / model_name, wire.encode_state(model, dtype="float32", codec="zstd", level=3))
    atomic_write(directory / CHECKPOINT_STATE, json.dumps({**state, "model": model_name}, indent=1).encode())
    for old in directory.glob("global_r*.fcw"):
        if old.name != model_name:
            old.unlink(missing_ok=True)


def save_state(directory: Path, state: Mapping[str, Any]) -> bool:
    """Rewrite ``state.json`` alone, keeping the model it names; False when there is none yet."""
    path = directory / CHECKPOINT_STATE
    if not path.exists():
        return False
    model_name = json.loads(path.read_text())["model"]
    atomic_write(path, json.dumps({**state, "model": model_name}, indent=1).encode())
    return True


def load_checkpoint(
    directory: Path, expected: Mapping[str, wire.TensorSpec] | None = None, into: Kind = "torch"
) -> tuple[dict[str, Array], dict[str, Any]] | None:
    """(model, state) of the last completed round, or None when the folder holds no checkpoint;
    the model as torch tensors or (``into="numpy"``) numpy arrays."""
    state_path = directory / CHECKPOINT_STATE
    if not state_path.exists():
        return None
    state = json.loads(state_path.read_text())
    model_path = directory / state["model"]
    try:
        model = wire.decode_state(model_path.read_bytes(), expected=expected, into=into)
    except (OSError, PayloadError) as exc:
        raise PayloadError(f"checkpoint {model_path} does not load: {exc}") from exc
    return model, state
