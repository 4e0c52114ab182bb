"""Datasets for the network stages: ``fashion-mnist`` (Debian's files, the embedded default) or
``cifar10:FOLDER`` (python-pickle batches the user supplies). Nothing is downloaded.

Subsets are the first N images of each split (Fashion-MNIST and CIFAR-10 files are already shuffled), so
a subset is the same on every machine. The source files' hashes go into every stage's metadata.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from nn.data import FASHION_DIR, DataError, cifar10, fashion_mnist
from pipeline.config import ConfigError


@dataclass(frozen=True)
class Data:
    """Train and test tensors of one dataset (images in [0, 1], int64 labels)."""

    spec: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    hashes: dict[str, str]

    @property
    def in_chans(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def num_classes(self) -> int:
        return int(torch.cat([self.y_train, self.y_test]).max()) + 1


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_spec(spec: str) -> str:
    """Validate a data spec without loading it: 'fashion-mnist' or 'cifar10:FOLDER' (the folder must exist)."""
    if spec == "fashion-mnist":
        return spec
    if spec.startswith("cifar10:"):
        folder = Path(spec.split(":", 1)[1])
        if not folder.is_dir():
            raise ConfigError(f"CIFAR-10 folder {folder} not found; pass --data cifar10:PATH to the extracted "
                              "'cifar-10-batches-py' folder (nothing is downloaded)")
        return spec
    raise ConfigError(f"unknown data {spec!r}; use 'fashion-mnist' or 'cifar10:FOLDER'")


@lru_cache(maxsize=2)
def _load_full(spec: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, tuple[tuple[str, str], ...]]:
    check_spec(spec)
    if spec == "fashion-mnist":
        folder = Path(os.environ.get("CIMCOSIM_FASHION_MNIST", str(FASHION_DIR)))
        tr, te = fashion_mnist(True), fashion_mnist(False)
        files = sorted(p for p in folder.glob("*-ubyte*") if p.is_file())
    else:
        folder = Path(spec.split(":", 1)[1])
        tr, te = cifar10(folder, True), cifar10(folder, False)
        files = sorted(folder.glob("*_batch*"))
    hashes = tuple((p.name, _sha256(p)) for p in files)
    (x_tr, y_tr), (x_te, y_te) = tr.tensors, te.tensors
    return x_tr, y_tr, x_te, y_te, hashes


def load_data(spec: str, train_subset: int | None = None, test_subset: int | None = None) -> Data:
    """Load ``spec``; the first ``train_subset`` / ``test_subset`` images of each split (None: all)."""
    for name, n in (("subset", train_subset), ("test subset", test_subset)):
        if n is not None and n <= 0:
            raise ConfigError(f"{name} {n} must be a positive number of images")
    try:
        x_tr, y_tr, x_te, y_te, hashes = _load_full(spec)
    except DataError as exc:
        raise ConfigError(str(exc)) from exc
    return Data(spec, x_tr[:train_subset], y_tr[:train_subset], x_te[:test_subset], y_te[:test_subset],
                dict(hashes))
