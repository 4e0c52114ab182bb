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
