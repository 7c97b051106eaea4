"""Partitions, the 8:1:1 split, data loading, models, and the REST service extras."""
from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from conftest import Harness, make_settings
from fedcore.app.data import dirichlet_partition, iid_partition, load_cifar10_arrays, load_federated
from fedcore.app.models import MODELS, build_model


def test_iid_partition_is_a_disjoint_cover() -> None:
    parts = iid_partition(1000, 3, seed=1)
    allidx = np.concatenate(parts)
    assert len(allidx) == 1000 and len(np.unique(allidx)) == 1000
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_dirichlet_partition_is_skewed_and_disjoint() -> None:
    labels = np.repeat(np.arange(10), 100)
    parts = dirichlet_partition(labels, 4, alpha=0.1, seed=0)
    allidx = np.concatenate(parts)
    assert len(np.unique(allidx)) == len(allidx) == 1000
    dominant = [np.bincount(labels[p], minlength=10).max() / len(p) for p in parts]
    assert max(dominant) > 0.3  # alpha=0.1 concentrates classes


def test_digits_federation_split_8_1_1() -> None:
    fed = load_federated("digits", 3, seed=0)
    assert len(fed.server_test) > 300
    for share in fed.clients:
        n = len(share.train) + len(share.val) + len(share.test)
        assert abs(len(share.train) / n - 0.8) < 0.01 and abs(len(share.val) / n - 0.1) < 0.01
    assert load_federated("digits", 3, seed=0).clients[1].train.y.tolist() == fed.clients[1].train.y.tolist()


def test_cifar_npz_layout(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for i in (0, 1):
        np.savez(tmp_path / f"cifar10_train_{i}.npz", x_train=rng.integers(0, 255, (40, 32, 32, 3), dtype=np.uint8),
                 y_train=rng.integers(0, 10, 40, dtype=np.uint8))
    np.savez(tmp_path / "cifar10_test.npz", x_test=rng.integers(0, 255, (20, 32, 32, 3), dtype=np.uint8),
             y_test=rng.integers(0, 10, 20, dtype=np.uint8))
    xtr, ytr, xte, yte = load_cifar10_arrays(tmp_path)
    assert xtr.shape == (80, 32, 32, 3) and xte.shape == (20, 32, 32, 3)
    fed = load_federated("cifar10", 2, data_dir=tmp_path)
    x, y = fed.clients[0].train.tensors()
    assert x.shape[1:] == (3, 32, 32) and x.dtype == torch.float32
    with pytest.raises(FileNotFoundError, match="no CIFAR-10"):
        load_cifar10_arrays(tmp_path / "nowhere")


@pytest.mark.parametrize("name", sorted(MODELS))
def test_models_build_and_run(name: str) -> None:
    model = build_model(name, "digits" if name.startswith("digits") else "cifar10")
    x = torch.randn(2, 64) if name.startswith("digits") else torch.randn(2, 3, 32, 32)
    assert model(x).shape == (2, 10)


def test_rest_service_extras(harness: Harness) -> None:
    srv = harness.server(make_settings("rest"))
    url = srv.client_settings().rest_url
    schema = httpx.get(f"{url}/openapi.json").json()
    for path in ("/client", "/client/{client_id}", "/client/autorun/{rounds}", "/client/autorun", "/client/signal",
                 "/transmitter", "/transmitter/{name}", "/status", "/history", "/health"):
        assert path in schema["paths"], path
    docs = httpx.get(f"{url}/docs")
    assert docs.status_code == 200 and "cdn" not in docs.text.lower()  # offline: assets from this server
    assert httpx.get(f"{url}/docs-assets/swagger-ui-bundle.js").status_code == 200
    assert httpx.get(f"{url}/redoc").status_code == 200
    assert httpx.get(f"{url}/health").json()["ready"] is True
    assert httpx.get(f"{url}/history").json() == []
    assert httpx.get(f"{url}/status").json()["num_clients"] == 0
    missing = httpx.get(f"{url}/transmitter")
    assert missing.status_code == 401
