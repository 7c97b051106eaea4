"""Data sets and partitions: digits (bundled with scikit-learn, no download) and CIFAR-10 from disk.

Every process computes the same partition from the same seed, so a client only needs its
index; nothing about the data ever crosses the network.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
SERVER_TEST_FRACTION = 0.2  # digits: held out for the server's global evaluation


class ArrayDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Images kept compact (uint8 for CIFAR) and normalised per item."""

    def __init__(self, x: np.ndarray, y: np.ndarray, kind: str) -> None:
        self.x, self.y, self.kind = x, y.astype(np.int64), kind
        if kind == "cifar10":
            self._mean = torch.tensor(CIFAR_MEAN).view(3, 1, 1)
            self._std = torch.tensor(CIFAR_STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.item(self.x[i]), torch.tensor(self.y[i])

    def item(self, x: np.ndarray) -> torch.Tensor:
        if self.kind == "cifar10":
            t = torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1).float().div_(255)
            return (t - self._mean) / self._std
        return torch.from_numpy(x)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole set as two tensors (fast batched loops without a DataLoader)."""
        if self.kind == "cifar10":
            x = torch.from_numpy(self.x).permute(0, 3, 1, 2).float().div_(255)
            x = (x - self._mean) / self._std
        else:
            x = torch.from_numpy(self.x)
        return x, torch.from_numpy(self.y)

    def subset(self, idx: np.ndarray) -> ArrayDataset:
        return ArrayDataset(self.x[idx], self.y[idx], self.kind)


@dataclass
class DataSplits:
    """One client's share, split train : val : test = 8 : 1 : 1 as in the REST paper."""

    train: ArrayDataset
    val: ArrayDataset
    test: ArrayDataset


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.data / 16.0).astype(np.float32), d.target.astype(np.int64)


def load_cifar10_arrays(data_dir: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test) uint8 NHWC from the npz layout or torchvision's folder."""
    root = Path(data_dir)
    if (root / "cifar10_test.npz").exists():
        parts = sorted(root.glob("cifar10_train_*.npz"))
        if not parts:
            raise FileNotFoundError(f"{root} has cifar10_test.npz but no cifar10_train_*.npz")
        trains = [np.load(p, allow_pickle=False) for p in parts]
        test = np.load(root / "cifar10_test.npz", allow_pickle=False)
        return (
            np.concatenate([t["x_train"] for t in trains]),
            np.concatenate([t["y_train"] for t in trains]),
            test["x_test"],
            test["y_test"],
        )
    tv_root = root.parent if root.name == "cifar-10-batches-py" else root
    if (tv_root / "cifar-10-batches-py").is_dir():
        from torchvision.datasets import CIFAR10  # local files only; download stays off

        tr, te = CIFAR10(str(tv_root), train=True, download=False), CIFAR10(str(tv_root), train=False, download=False)
        return tr.data, np.asarray(tr.targets), te.data, np.asarray(te.targets)
    raise FileNotFoundError(
        f"no CIFAR-10 found in {root}: expected cifar10_{{train_*,test}}.npz or a torchvision cifar-10-batches-py folder"
    )


def default_cifar_dir() -> Path | None:
    """../shared/data/cifar10 beside the checkout (or shared/ inside it), when it is there."""
    checkout = Path(__file__).resolve().parents[2]  # fedcore/app/data.py -> the checkout
    for root in (checkout.parent, checkout):
        here = root / "shared" / "data" / "cifar10"
        if here.is_dir():
            return here
    return None


def iid_partition(n: int, num_clients: int, seed: int) -> list[np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    return [np.sort(p) for p in np.array_split(perm, num_clients)]


def dirichlet_partition(
    labels: np.ndarray, num_clients: int, alpha: float, seed: int, min_size: int = 10
) -> list[np.ndarray]:
    """Per-class client proportions drawn from Dir(alpha); redrawn until every client has ``min_size``."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    for _ in range(100):
        shards: list[list[int]] = [[] for _ in range(num_clients)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(labels == c))
            props = rng.dirichlet([alpha] * num_clients)
            cuts = (np.cumsum(props) * len(idx)).astype(int)[:-1]
            for k, part in enumerate(np.split(idx, cuts)):
                shards[k].extend(part.tolist())
        if min(len(s) for s in shards) >= min_size:
            return [np.sort(np.asarray(s, dtype=np.int64)) for s in shards]
    raise ValueError(f"Dirichlet(alpha={alpha}) left a client with < {min_size} samples; raise alpha")


def split_8_1_1(ds: ArrayDataset, seed: int) -> DataSplits:
    perm = np.random.default_rng(seed).permutation(len(ds))
    n_train, n_val = int(len(ds) * 0.8), int(len(ds) * 0.1)
    return DataSplits(
        ds.subset(perm[:n_train]), ds.subset(perm[n_train : n_train + n_val]), ds.subset(perm[n_train + n_val :])
    )


@dataclass
class Federated:
    """The data of one federation: the server's global test set and every client's share."""

    server_test: ArrayDataset
    clients: list[DataSplits]
    num_classes: int
    kind: str


def load_federated(
    dataset: str,
    num_clients: int,
    *,
    partition: str = "iid",
    alpha: float = 0.5,
    seed: int = 0,
    data_dir: str | Path | None = None,
    limit: int | None = None,
) -> Federated:
    """Partition a data set among ``num_clients`` (IID or Dirichlet non-IID), each 8:1:1."""
    if dataset == "digits":
        x, y = load_digits_arrays()
        perm = np.random.default_rng(seed + 7).permutation(len(y))
        n_test = int(len(y) * SERVER_TEST_FRACTION)
        test_idx, pool_idx = perm[:n_test], perm[n_test:]
        server_test = ArrayDataset(x[test_idx], y[test_idx], "digits")
        pool = ArrayDataset(x[pool_idx], y[pool_idx], "digits")
    elif dataset == "cifar10":
        root = data_dir or default_cifar_dir()
        if root is None:
            raise FileNotFoundError("CIFAR-10 needs --data-dir (npz files or torchvision's folder)")
        xtr, ytr, xte, yte = load_cifar10_arrays(root)
        pool, server_test = ArrayDataset(xtr, ytr, "cifar10"), ArrayDataset(xte, yte, "cifar10")
    else:
        raise ValueError(f"unknown data set {dataset!r}; choose digits or cifar10")
    if limit is not None:
        pool = pool.subset(np.arange(min(limit, len(pool))))
        server_test = server_test.subset(np.arange(min(max(limit // 4, 50), len(server_test))))
    if partition == "iid":
        parts = iid_partition(len(pool), num_clients, seed)
    elif partition == "dirichlet":
        parts = dirichlet_partition(pool.y, num_clients, alpha, seed)
    else:
        raise ValueError(f"unknown partition {partition!r}; choose iid or dirichlet")
    clients = [split_8_1_1(pool.subset(p), seed + 1 + k) for k, p in enumerate(parts)]
    return Federated(server_test, clients, 10, dataset)
