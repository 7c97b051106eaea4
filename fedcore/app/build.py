"""Build a Federation for the CLI, demo and experiments: the configured model from the zoo (or
the user's), its strategy, and a server-side evaluation on the data set's held-out split."""
from __future__ import annotations

from torch import nn

from fedcore.app.data import load_federated
from fedcore.app.models import build_model
from fedcore.config import Settings
from fedcore.federation import EvaluateFn, Federation, FitConfigFn
from fedcore.loops import make_evaluate_fn
from fedcore.strategy import Strategy


def build_federation(settings: Settings, *, model: nn.Module | None = None, evaluate_fn: EvaluateFn | None = None,
                     fit_config_fn: FitConfigFn | None = None, strategy: Strategy | None = None,
                     stop_when_done: bool = False) -> Federation:
    """The server side of the configured federation. Without ``evaluate_fn`` the global model is
    scored on the data set's server test split (``model`` must then fit that data set)."""
    if evaluate_fn is None:
        data = load_federated(
            settings.dataset, settings.num_partitions, partition=settings.partition, alpha=settings.alpha,
            seed=settings.seed, data_dir=settings.data_dir,
        )
        model = model or build_model(settings.model, settings.dataset, data.num_classes, seed=settings.seed)
        evaluate_fn = make_evaluate_fn(model, data.server_test)
    elif model is None:
        model = build_model(settings.model, settings.dataset, seed=settings.seed)
    return Federation.from_settings(settings, model.state_dict(), strategy=strategy, evaluate_fn=evaluate_fn,
                                    fit_config_fn=fit_config_fn, stop_when_done=stop_when_done)
