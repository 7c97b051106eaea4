"""What a client process trains: a user's model, data and loops, named ``module:callable``.

``fedcore client --app pkg.mod:make_app`` imports ``make_app`` and calls it with the client's
Settings and partition index; it returns a :class:`ClientApp`. The default app is the
configured data set's partition and the model zoo's model.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn
from torch.utils.data import Dataset

from fedcore.config import Settings
from fedcore.errors import ConfigError


@dataclass
class ClientApp:
    model: nn.Module
    train_data: Dataset[Any]
    val_data: Dataset[Any] | None = None
    train_fn: Callable[..., Any] | None = None
    evaluate_fn: Callable[..., Any] | None = None
    #: Called with each secure-aggregation stage's name once its reply arrived (hello, keys,
    #: shares, masked, unmask): ``FLClient.secagg_after_stage`` for a client process, so tests
    #: and experiments can make a real process drop out mid-protocol (e.g. ``os._exit`` after
    #: ``masked``).
    secagg_after_stage: Callable[[str], None] | None = None


AppFactory = Callable[[Settings, int], ClientApp]


def default_app(settings: Settings, index: int) -> ClientApp:
    """Partition ``index`` of the configured data set and the zoo's model for it."""
    from fedcore.app.data import load_federated
    from fedcore.app.models import build_configured_model

    data = load_federated(settings.dataset, settings.num_partitions, partition=settings.partition,
                          alpha=settings.alpha, seed=settings.seed, data_dir=settings.data_dir)
    if not 0 <= index < len(data.clients):
        raise ConfigError(f"--index must be in 0..{len(data.clients) - 1} (num_partitions={settings.num_partitions})")
    share = data.clients[index]
    model = build_configured_model(settings, data.num_classes)
    return ClientApp(model, share.train, share.val)


def load_app(ref: str | None) -> AppFactory:
    """The factory named ``module:callable`` (None: the default app)."""
    if not ref:
        return default_app
    module, sep, attr = ref.partition(":")
    if not sep or not module or not attr:
        raise ConfigError(f"--app expects module:callable, got {ref!r}")
    try:
        factory = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot load app {ref!r}: {exc}") from exc
    if not callable(factory):
        raise ConfigError(f"app {ref!r} is not callable")
    return factory  # type: ignore[no-any-return]
