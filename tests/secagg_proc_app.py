"""The ClientApp of ``tests/test_secagg_processes.py``: ``fedcore client --app
tests.secagg_proc_app:make_app``. Its "training" is known to the test: in its t-th round (t = 1,
2, ... counted in this process) client ``index`` sets every float parameter to
global + ``client_delta(index, t)`` (float32 arithmetic), so the test can compute each update.
With ``SECAGG_TEST_EXIT_AFTER=<stage>:<t>`` in its environment the process ends with
``os._exit(DROP_EXIT_CODE)`` right after that secure-aggregation stage's reply in its t-th round
(a crash: no goodbye, no unmasking shares). With ``SECAGG_TEST_HOLD=<path>`` it waits for that
file before it connects, so a test can start a process early (imports take seconds) and let it
join a later round."""
from __future__ import annotations

import os
import sys
import time
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from fedcore.app.apps import ClientApp
from fedcore.config import Settings

DROP_EXIT_CODE = 17
EXIT_ENV = "SECAGG_TEST_EXIT_AFTER"
HOLD_ENV = "SECAGG_TEST_HOLD"
HOLD_MAX_S = 300.0
DELTA_RANGE = 0.6  # beyond the strategy's clip (0.5 in the test), so clipping is exercised too


def build_model() -> nn.Module:
    torch.manual_seed(1234)
    return nn.Sequential(nn.Linear(30, 20), nn.ReLU(), nn.Linear(20, 3))


def float_names(state: dict[str, torch.Tensor]) -> list[str]:
    return sorted(k for k, v in state.items() if v.is_floating_point())


def client_delta(index: int, turn: int, size: int) -> np.ndarray:
    """What client ``index`` adds to the global in its ``turn``-th round, over the float tensors
    in sorted-name order (float32)."""
    return np.random.default_rng([index, turn]).uniform(-DELTA_RANGE, DELTA_RANGE, size).astype(np.float32)


def _hold(path: str) -> None:
    end = time.monotonic() + HOLD_MAX_S
    while not os.path.exists(path):
        if time.monotonic() > end:
            raise TimeoutError(f"{path} did not appear within {HOLD_MAX_S:.0f}s")
        time.sleep(0.05)


def make_app(settings: Settings, index: int) -> ClientApp:
    if os.environ.get(HOLD_ENV):
        _hold(os.environ[HOLD_ENV])
    model = build_model()
    turns = [0]

    def train_fn(model: nn.Module, data: Any, *, global_state: dict[str, torch.Tensor], **_: Any) -> dict[str, float]:
        turns[0] += 1
        state = model.state_dict()
        names = float_names(state)
        delta = client_delta(index, turns[0], sum(state[k].numel() for k in names))
        offset = 0
        with torch.no_grad():
            for k in names:
                n = state[k].numel()
                part = torch.from_numpy(delta[offset:offset + n]).reshape(state[k].shape)
                state[k].copy_(global_state[k] + part)
                offset += n
        return {"turn": float(turns[0])}

    exit_stage, _, exit_turn = os.environ.get(EXIT_ENV, "").partition(":")

    def after_stage(stage: str) -> None:
        if stage == exit_stage and str(turns[0]) == exit_turn:
            sys.stdout.flush()
            os._exit(DROP_EXIT_CODE)

    data = TensorDataset(torch.zeros(8, 30), torch.zeros(8, dtype=torch.long))
    return ClientApp(model, data, train_fn=train_fn, secagg_after_stage=after_stage)
