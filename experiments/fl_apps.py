"""The accuracy experiments' client app: ``fedcore client --app experiments.fl_apps:make_app``.

Settings rejects unknown keys, so the experiment's own parameters travel in environment variables:

- ``FEDCORE_EXP_SPEC``: an experiments.partitions.PartitionSpec as JSON (required): which share of
  the paper's Table 5/6 split this client holds (the process's ``--index``).
- ``FEDCORE_EXP_MODEL``: the experiments.models_small model name (default ``cifar_cnn_s``).
- ``FEDCORE_EXP_THREADS``: torch threads (default 1: N client processes share the cores).
- ``FEDCORE_EXP_NO_VAL``: ``1`` skips the per-round local validation.

Epochs, batch size and learning rate are not here: the server sends them with each round.
"""
from __future__ import annotations

import os

from fedcore.app.apps import ClientApp
from fedcore.config import Settings
from fedcore.errors import ConfigError

SPEC_VAR, MODEL_VAR, THREADS_VAR, NO_VAL_VAR = "FEDCORE_EXP_SPEC", "FEDCORE_EXP_MODEL", "FEDCORE_EXP_THREADS", "FEDCORE_EXP_NO_VAL"


def make_app(settings: Settings, index: int) -> ClientApp:
    """Share ``index`` of the experiment's partition and the named small model."""
    import torch

    from experiments.models_small import make_model
    from experiments.partitions import PartitionSpec, client_splits

    spec_json = os.environ.get(SPEC_VAR)
    if not spec_json:
        raise ConfigError(f"{SPEC_VAR} must hold the PartitionSpec JSON (see experiments/fl_apps.py)")
    spec = PartitionSpec.from_json(spec_json)
    if not 0 <= index < spec.num_clients:
        raise ConfigError(f"--index must be in 0..{spec.num_clients - 1} for this partition")
    torch.set_num_threads(int(os.environ.get(THREADS_VAR, "1")))
    share = client_splits(spec, index)
    model = make_model(os.environ.get(MODEL_VAR, "cifar_cnn_s"), seed=spec.seed)
    no_val = os.environ.get(NO_VAL_VAR, "") not in ("", "0")
    return ClientApp(model, share.train, None if no_val else share.val)
