"""Build a Federation for the CLI, demo and experiments: the configured model from the zoo (or
the user's), its strategy, a server-side evaluation on the data set's held-out split, and in
split mode the edge half of the model and its trainer."""
from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import nn

from fedcore.arrays import Array, torch_state
from fedcore import wire
from fedcore.app.data import load_federated
from fedcore.app.models import build_configured_model
from fedcore.config import Settings
from fedcore.federation import EDGE_CHECKPOINT, EvaluateFn, Federation, FitConfigFn
from fedcore.loops import evaluate, make_evaluate_fn
from fedcore.metrics import MetricsAggregationFn
from fedcore.selection import ClientSelector
from fedcore.strategy import Strategy


def build_federation(settings: Settings, *, model: nn.Module | None = None, evaluate_fn: EvaluateFn | None = None,
                     fit_config_fn: FitConfigFn | None = None, strategy: Strategy | None = None,
                     stop_when_done: bool = False, selector: ClientSelector | None = None,
                     fit_metrics_aggregation: MetricsAggregationFn | None = None,
                     evaluate_metrics_aggregation: MetricsAggregationFn | None = None) -> Federation:
    """The server side of the configured federation. Without ``evaluate_fn`` the global model is
    scored on the data set's server test split (``model`` must then fit that data set)."""
    data = None
    if evaluate_fn is None or settings.mode == "split":
        data = load_federated(
            settings.dataset, settings.num_partitions, partition=settings.partition, alpha=settings.alpha,
            seed=settings.seed, data_dir=settings.data_dir,
        )
    if model is None:
        classes = data.num_classes if data is not None else 10
        model = build_configured_model(settings, classes)
    if settings.mode == "split":
        assert data is not None
        return _split_federation(settings, model, data.server_test, data.num_classes, evaluate_fn, fit_config_fn,
                                 strategy, stop_when_done)
    if evaluate_fn is None:
        assert data is not None
        evaluate_fn = make_evaluate_fn(model, data.server_test)
    return Federation.from_settings(settings, model.state_dict(), strategy=strategy, evaluate_fn=evaluate_fn,
                                    fit_config_fn=fit_config_fn, stop_when_done=stop_when_done, selector=selector,
                                    fit_metrics_aggregation=fit_metrics_aggregation,
                                    evaluate_metrics_aggregation=evaluate_metrics_aggregation)


def _split_federation(settings: Settings, model: nn.Module, test_data: object, num_classes: int,
                      evaluate_fn: EvaluateFn | None, fit_config_fn: FitConfigFn | None, strategy: Strategy | None,
                      stop_when_done: bool) -> Federation:
    """Split mode: the federation averages the device side; the edge side stays here, trained
    by an EdgeTrainer on every device's activations."""
    from fedcore.split.cut import cut
    from fedcore.split.edge import EdgeTrainer, sgd
    from fedcore.split.setup import split_setup

    example = test_data[0][0].unsqueeze(0)  # type: ignore[index]
    if settings.split_at is None and getattr(model, "cut_at", None):  # name the cut in the train instruction
        settings = settings.model_copy(update={"split_at": getattr(model, "cut_at")})
    device = "cuda" if torch.cuda.is_available() else "cpu"
    setup = split_setup(model, example, at=settings.split_at, head_at=settings.split_head_at,
                        batch_size=settings.batch_size, micro_batches=settings.micro_batches,
                        window=settings.split_window, num_classes=num_classes, per_device=settings.edge_per_device,
                        dtype=settings.split_dtype, device=device)
    saved = settings.checkpoint_dir / EDGE_CHECKPOINT if settings.checkpoint_dir else None
    if saved is not None and saved.exists():  # a restarted edge resumes with its trained half
        setup.split.edge.load_state_dict(wire.decode_state(saved.read_bytes()))
    scorer = copy.deepcopy(model)
    scorer_split = cut(scorer, at=settings.split_at or getattr(model, "cut_at"), head_at=settings.split_head_at)
    edge = EdgeTrainer(setup.split.edge, setup.config.edge, optimizer=sgd(lr=settings.lr))

    def evaluate_split(state: Mapping[str, Array]) -> dict[str, float]:
        """The whole model: the new device side with the edge as it is now."""
        scorer_split.device_side.load_state_dict(torch_state(state))
        scorer_split.edge.load_state_dict(edge.edge_state())
        return evaluate(scorer, test_data)  # type: ignore[arg-type]

    return Federation.from_settings(settings, setup.split.device_side.state_dict(), strategy=strategy,
                                    evaluate_fn=evaluate_fn or evaluate_split, fit_config_fn=fit_config_fn,
                                    edge=edge, stop_when_done=stop_when_done)
