"""Shared fixtures: real technology, small real characterization runs (session-scoped, run once)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from circuits.technology import load_technology

logging.getLogger("PySpice").setLevel(logging.ERROR)


@pytest.fixture(scope="session")
def tech():
    return load_technology("freepdk45")


@pytest.fixture(scope="session")
def small_run(tmp_path_factory) -> Path:
    """A small real characterization (2 workers): W/L 4 and 10, 16 samples, both ADCs."""
    from pipeline.characterize import characterize
    from pipeline.config import CharacterizeConfig
    from pipeline.executor import make_executor

    run_dir = tmp_path_factory.mktemp("run")
    cfg = CharacterizeConfig(wl_ratios=(4.0, 10.0), samples=16, resolution_bits=2, chunk_size=16)
    with make_executor(2) as ex:
        characterize(cfg, run_dir, ex)
    return run_dir


@pytest.fixture(scope="session")
def chip_run(small_run, tmp_path_factory) -> Path:
    """``small_run`` plus fit and chips (4 chips per design): real offset tables from real ngspice."""
    import shutil

    from pipeline.chips import ChipsConfig, chips
    from pipeline.fit import fit

    run = tmp_path_factory.mktemp("chiprun") / "run"
    shutil.copytree(small_run, run)
    fit(run)
    chips(run, ChipsConfig(n_chips=4))
    return run


@pytest.fixture(scope="session")
def tiny_train() -> dict:
    """A tiny model0: test_vgg on 600 Fashion-MNIST images, 32-row arrays, 5-bit ADC (the chips' resolution)."""
    return {"model": "test_vgg", "subset": 600, "test_subset": 300, "epochs": 4, "batch": 50, "rows": 32,
            "lr": 3e-3}


@pytest.fixture(scope="session")
def trained_run(chip_run, tiny_train, tmp_path_factory) -> Path:
    """``chip_run`` plus a tiny model0 under tag 'tiny'."""
    import shutil

    from pipeline.train import train, train_config

    run = tmp_path_factory.mktemp("trained") / "run"
    shutil.copytree(chip_run, run)
    train(run, train_config(**tiny_train), tag="tiny")
    return run
