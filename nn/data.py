"""Real data loaders: Fashion-MNIST from Debian's dataset-fashion-mnist files, CIFAR-10 from a local folder.

Nothing is downloaded. Fashion-MNIST is read from the idx files the Debian package installs
(``/usr/share/datasets/fashion-mnist``, override with ``CIMCOSIM_FASHION_MNIST``); CIFAR-10 from a
user-supplied folder in its standard python-pickle format (``data_batch_1..5``, ``test_batch``).
"""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


class DataError(FileNotFoundError):
    """A dataset is missing or malformed."""


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataError(f"{path} is not an idx file")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise DataError(f"{path} is truncated ({arr.size} values, header says {shape})")
    return arr.reshape(shape)


def fashion_mnist(train: bool, root: str | Path | None = None, limit: int | None = None) -> TensorDataset:
    """Fashion-MNIST as float images [N, 1, 28, 28] in [0, 1] and int64 labels."""
    folder = Path(root) if root else Path(os.environ.get("CIMCOSIM_FASHION_MNIST", str(FASHION_DIR)))
    prefix = "train" if train else "t10k"
    files = []
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        hits = [folder / f"{prefix}-{kind}{ext}" for ext in (".gz", "")]
        found = next((h for h in hits if h.is_file()), None)
        if found is None:
            raise DataError(f"Fashion-MNIST file {hits[0]} not found; run ./ngspice_setup.sh (installs Debian's "
                            "dataset-fashion-mnist) or set CIMCOSIM_FASHION_MNIST")
        files.append(found)
    images, labels = _read_idx(files[0]), _read_idx(files[1])
    if len(images) != len(labels):
        raise DataError(f"Fashion-MNIST {prefix}: {len(images)} images but {len(labels)} labels")
    n = len(labels) if limit is None else min(limit, len(labels))
    x = torch.from_numpy(images[:n].astype(np.float32) / 255.0).unsqueeze(1)
    return TensorDataset(x, torch.from_numpy(labels[:n].astype(np.int64)))


def cifar10(root: str | Path, train: bool) -> TensorDataset:
    """CIFAR-10 from a folder in the python-pickle format: float images [N, 3, 32, 32] in [0, 1]."""
    folder = Path(root)
    names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    xs, ys = [], []
    for name in names:
        path = folder / name
        if not path.is_file():
            raise DataError(f"CIFAR-10 file {path} not found; point --data at the extracted "
                            "'cifar-10-batches-py' folder (nothing is downloaded)")
        try:
            with open(path, "rb") as f:
                batch = pickle.load(f, encoding="bytes")
            data = np.asarray(batch[b"data"], dtype=np.uint8)
            labels = np.asarray(batch[b"labels"], dtype=np.int64)
        except (pickle.UnpicklingError, KeyError, EOFError, ValueError) as exc:
            raise DataError(f"CIFAR-10 file {path} is malformed ({exc})") from exc
        if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
            raise DataError(f"CIFAR-10 file {path}: data {data.shape} / labels {labels.shape} are not N x 3072 / N")
        xs.append(data)
        ys.append(labels)
    x = torch.from_numpy(np.concatenate(xs).reshape(-1, 3, 32, 32).astype(np.float32) / 255.0)
    return TensorDataset(x, torch.from_numpy(np.concatenate(ys)))
