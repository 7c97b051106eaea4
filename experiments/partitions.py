"""CIFAR-10 partitions of the REST paper's section 4 (Tables 5 and 6), computed identically in
the orchestrator and in every client process from one small :class:`PartitionSpec`.

How the paper's tables are read
-------------------------------
Tables 5-6 list per client a Train, Val and Test count. Every Train column sums to the 50,000
CIFAR-10 training images (to within 1-3 images), and every Val and Test entry is exactly
``floor(Train / 10)``: the Val + Test columns together sum to the 10,000 test images
(e.g. IID, 2 clients: 25,000 / 2,500 / 2,500 each). So the tables are reproduced exactly by

* client k's training set: ``Train_k`` images of the 50,000-image training set (disjoint);
* its validation and test sets: ``floor(Train_k / 10)`` images each of the 10,000-image test
  set (disjoint across clients).

The text's "train : val : test = 8 : 1 : 1" is, in the tables, 10 : 1 : 1 of that layout; we
follow the tables (``client_split="table"``). ``client_split="811"`` instead splits each
client's share 8 : 1 : 1 like ``fedcore.app.data.split_8_1_1``.

Table 6 gives only counts, not the class mix of each client. The paper defines non-IID as "the
class distribution *or the number* of samples differs between clients"; ``mode="paper"`` keeps
the exact counts with a random class mix (quantity skew). ``label_alpha`` adds a label skew
under the same exact counts (each client's class proportions ~ Dirichlet(label_alpha)), and
``mode="dirichlet"`` is the usual per-class Dirichlet(alpha) split (fedcore.app.data's).

``fraction`` < 1 scales every count by the same factor (``floor(count * fraction)``) so the
grid fits a small CPU; the proportions between clients stay those of the tables.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from fedcore.app.data import ArrayDataset, DataSplits, default_cifar_dir, dirichlet_partition, load_cifar10_arrays

# Table 5 (IID) and Table 6 (non-IID): the Train column, per number of clients.
PAPER_IID_TRAIN = {2: (25_000, 25_000), 3: (16_666, 16_666, 16_666), 5: (10_000,) * 5}
PAPER_NONIID_TRAIN = {
    2: (42_754, 7_245),
    3: (19_067, 23_281, 7_651),
    5: (9_695, 18_545, 3_712, 12_339, 5_706),
}
CIFAR_TRAIN_SIZE = 50_000
MODES = ("iid", "paper", "dirichlet")


@dataclass(frozen=True)
class PartitionSpec:
    """Everything a process needs to compute the same shares (passed to clients as JSON)."""

    num_clients: int
    mode: str = "iid"  # iid | paper | dirichlet
    fraction: float = 1.0  # scale of every count (and of the centralised pool)
    alpha: float = 0.5  # mode="dirichlet"
    label_alpha: float | None = None  # mode="paper": label skew under the exact counts
    client_split: str = "table"  # table | 811
    eval_size: int = 10_000  # server's global test set: this many test images (fixed subset)
    seed: int = 0
    data_dir: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown partition mode {self.mode!r}; choose one of {MODES}")
        if self.mode == "paper" and self.num_clients not in PAPER_NONIID_TRAIN:
            raise ValueError(f"the paper's Table 6 has 2, 3 or 5 clients, not {self.num_clients}")
        if not 0 < self.fraction <= 1:
            raise ValueError("fraction must be in (0, 1]")
        if self.client_split not in ("table", "811"):
            raise ValueError("client_split must be 'table' or '811'")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> PartitionSpec:
        return cls(**json.loads(text))


CACHE_ENV = "FL_ACCURACY_CACHE"  # folder for a decompressed copy (memory-mapped by every process)
_NAMES = ("x_train", "y_train", "x_test", "y_test")


@lru_cache(maxsize=2)
def load_arrays(data_dir: str | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test). With $FL_ACCURACY_CACHE set, the decompressed arrays are
    kept there as .npy and memory-mapped, so N client processes start in a fraction of a second
    and share one copy in the page cache instead of each inflating 170 MB of npz."""
    root = data_dir or default_cifar_dir()
    if root is None:
        raise FileNotFoundError("CIFAR-10 not found: pass --data-dir (npz files or torchvision's folder)")
    cache = os.environ.get(CACHE_ENV)
    if not cache:
        return load_cifar10_arrays(root)
    key = hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:12]
    folder = Path(cache) / f"cifar10_{key}"
    if not all((folder / f"{n}.npy").exists() for n in _NAMES):
        arrays = load_cifar10_arrays(root)
        folder.mkdir(parents=True, exist_ok=True)
        for n, a in zip(_NAMES, arrays):
            tmp = folder / f".{n}.{os.getpid()}.npy"
            np.save(tmp, np.ascontiguousarray(a))
            os.replace(tmp, folder / f"{n}.npy")  # atomic: concurrent readers see whole files
        return arrays
    x_tr, y_tr, x_te, y_te = (np.load(folder / f"{n}.npy", mmap_mode="r") for n in _NAMES)
    return x_tr, np.asarray(y_tr), x_te, np.asarray(y_te)


def pool_indices(n_train: int, fraction: float, seed: int) -> np.ndarray:
    """The training images in play: a fixed random ``fraction`` of the training set."""
    perm = np.random.default_rng(seed).permutation(n_train)
    return perm[: int(n_train * fraction)]


def train_counts(spec: PartitionSpec, n_train: int = CIFAR_TRAIN_SIZE) -> list[int]:
    """Per-client training-set sizes: Table 5 / Table 6 scaled by ``fraction`` (iid: equal)."""
    if spec.mode == "paper":
        base = PAPER_NONIID_TRAIN[spec.num_clients]
    elif spec.mode == "iid":
        base = PAPER_IID_TRAIN.get(spec.num_clients) or (n_train // spec.num_clients,) * spec.num_clients
    else:
        raise ValueError("dirichlet shares have random sizes; see partition()")
    scale = spec.fraction * n_train / CIFAR_TRAIN_SIZE
    return [int(c * scale) for c in base]


def _skewed_allocation(
    counts: list[int], labels: np.ndarray, alpha: float, rng: np.random.Generator
) -> np.ndarray:
    """Integer matrix [client, class] with row sums = ``counts`` exactly, column sums within the
    images available per class, rows shaped by Dirichlet(alpha) class proportions (IPF fit)."""
    classes, avail = np.unique(labels, return_counts=True)
    rows = np.asarray(counts, dtype=float)
    m = rng.dirichlet([alpha] * len(classes), size=len(counts)) * rows[:, None] + 1e-9
    cols = avail * rows.sum() / avail.sum()
    for _ in range(500):  # iterative proportional fitting to both margins
        m *= (rows / m.sum(1))[:, None]
        m *= cols / m.sum(0)
    m *= (rows / m.sum(1))[:, None]
    out = np.floor(m).astype(np.int64)
    left = avail - out.sum(0)
    for k in range(len(counts)):  # largest remainders first, within what each class has left
        need = counts[k] - int(out[k].sum())
        for c in np.argsort(-(m[k] - out[k])):
            if need == 0:
                break
            take = min(need, int(left[c]), 1 if m[k, c] - out[k, c] > 0 else 0) or 0
            out[k, c] += take
            left[c] -= take
            need -= take
        for c in np.argsort(-left):  # rare: still short, take from the fullest classes
            if need == 0:
                break
            take = min(need, int(left[c]))
            out[k, c] += take
            left[c] -= take
            need -= take
        if need:
            raise ValueError("not enough images to honour the counts")
    return out


def partition(spec: PartitionSpec, y_train: np.ndarray) -> list[np.ndarray]:
    """Indices into the training set held by each client (sorted, disjoint)."""
    pool = pool_indices(len(y_train), spec.fraction, spec.seed)
    rng = np.random.default_rng(spec.seed + 1)
    if spec.mode == "dirichlet":
        parts = dirichlet_partition(y_train[pool], spec.num_clients, spec.alpha, spec.seed + 1)
        return [np.sort(pool[p]) for p in parts]
    counts = train_counts(spec, len(y_train))
    if spec.mode == "iid" or spec.label_alpha is None:
        perm = rng.permutation(pool)
        cuts = np.cumsum([0, *counts])
        return [np.sort(perm[cuts[k] : cuts[k + 1]]) for k in range(spec.num_clients)]
    labels = y_train[pool]
    alloc = _skewed_allocation(counts, labels, spec.label_alpha, rng)
    by_class = {c: list(rng.permutation(pool[labels == c])) for c in np.unique(labels)}
    shares: list[np.ndarray] = []
    for k in range(spec.num_clients):
        idx: list[int] = []
        for j, c in enumerate(np.unique(labels)):
            n = int(alloc[k, j])
            idx += by_class[c][:n]
            del by_class[c][:n]
        shares.append(np.sort(np.asarray(idx, dtype=np.int64)))
    return shares


def server_eval_indices(n_test: int, spec: PartitionSpec) -> np.ndarray:
    """The fixed test images the server scores the global model on (all of them by default)."""
    if spec.eval_size >= n_test:
        return np.arange(n_test)
    return np.sort(np.random.default_rng(spec.seed + 99).permutation(n_test)[: spec.eval_size])


def client_splits(spec: PartitionSpec, index: int) -> DataSplits:
    """Client ``index``'s train / val / test sets (see the module docstring for the layout)."""
    if not 0 <= index < spec.num_clients:
        raise ValueError(f"client index must be in 0..{spec.num_clients - 1}")
    x_tr, y_tr, x_te, y_te = load_arrays(spec.data_dir)
    shares = partition(spec, y_tr)
    train = ArrayDataset(x_tr[shares[index]], y_tr[shares[index]], "cifar10")
    if spec.client_split == "811":
        perm = np.random.default_rng(spec.seed + 11 + index).permutation(len(train))
        n_tr, n_val = int(len(train) * 0.8), int(len(train) * 0.1)
        return DataSplits(train.subset(perm[:n_tr]), train.subset(perm[n_tr : n_tr + n_val]),
                          train.subset(perm[n_tr + n_val :]))
    sizes = [len(s) // 10 for s in shares]
    test_perm = np.random.default_rng(spec.seed + 7).permutation(len(y_te))
    start = 2 * sum(sizes[:index])
    if start + 2 * sizes[index] > len(y_te):  # only possible for extreme Dirichlet splits
        start %= max(1, len(y_te) - 2 * sizes[index])
    val_idx = test_perm[start : start + sizes[index]]
    test_idx = test_perm[start + sizes[index] : start + 2 * sizes[index]]
    return DataSplits(train, ArrayDataset(x_te[val_idx], y_te[val_idx], "cifar10"),
                      ArrayDataset(x_te[test_idx], y_te[test_idx], "cifar10"))


def centralised_train(spec: PartitionSpec) -> ArrayDataset:
    """The centralised baseline's training set: the whole pool (every client's data together)."""
    x_tr, y_tr, _, _ = load_arrays(spec.data_dir)
    pool = np.sort(pool_indices(len(y_tr), spec.fraction, spec.seed))
    return ArrayDataset(x_tr[pool], y_tr[pool], "cifar10")


def server_eval_set(spec: PartitionSpec) -> ArrayDataset:
    _, _, x_te, y_te = load_arrays(spec.data_dir)
    idx = server_eval_indices(len(y_te), spec)
    return ArrayDataset(x_te[idx], y_te[idx], "cifar10")


def describe(spec: PartitionSpec) -> list[dict[str, object]]:
    """Per client: train / val / test sizes and class histogram (for the report)."""
    _, y_tr, _, _ = load_arrays(spec.data_dir)
    shares = partition(spec, y_tr)
    out = []
    for k, s in enumerate(shares):
        n = len(s)
        if spec.client_split == "table":
            sizes = (n, n // 10, n // 10)
        else:
            sizes = (int(n * 0.8), int(n * 0.1), n - int(n * 0.8) - int(n * 0.1))
        out.append({"client": f"client_{k + 1}", "train": sizes[0], "val": sizes[1], "test": sizes[2],
                    "classes": np.bincount(y_tr[s], minlength=10).tolist()})
    return out


def data_dir_of(path: str | Path | None) -> str | None:
    return None if path is None else str(Path(path).resolve())
