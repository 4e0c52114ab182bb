"""The cell-level benchmark scripts (noise_draws, adv_diagnostics) on a tiny noisy cell: they run end to end, and
bad input exits 2 with one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def _script(name: str, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / name), *argv], capture_output=True, text=True,
                          env=env, timeout=600)


@pytest.fixture(scope="module")
def noisy_cell(tmp_path_factory) -> Path:
    """A tiny test_resnet trained with Gaussian read noise of 2 partial sums (tag 'noisy') and one without ('ideal')."""
    from pipeline.train import train, train_config

    run = tmp_path_factory.mktemp("cells")
    for tag, sigma in (("noisy", 2.0), ("ideal", 0.0)):
        train(run, train_config("test_resnet", subset=200, test_subset=100, epochs=1, batch=50,
                                noise_sigma_psum=sigma), tag=tag)
    return run


def test_noise_draws_reports_a_noisy_cell(noisy_cell):
    out = _script("noise_draws.py", "--run-dir", str(noisy_cell), "--tag", "noisy", "--draws", "3", "--images", "40")
    assert out.returncode == 0, out.stderr
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in out.stdout.splitlines()
            if line.startswith("| ") and "---" not in line}
    mean = float(rows["accuracy per draw, mean (sd)"].split()[0])
    assert float(rows["right under every draw"]) <= mean <= 100 - float(rows["right under no draw"])
    assert 0 <= float(rows["agreement of two draws"]) <= 1


def test_adv_diagnostics_scores_the_ensemble_over_draws(noisy_cell):
    out = _script("adv_diagnostics.py", "--run-dir", str(noisy_cell), "--tag", "noisy", "--images", "40",
                  "--no-probes", "--margin-only", "--restarts", "1", "--eps", "0.05", "--score-draws", "3",
                  "--vote", "2")
    assert out.returncode == 0, out.stderr
    rows = [line.split("|")[1:3] for line in out.stdout.splitlines() if line.startswith("| ") and "---" not in line]

    def value(start: str) -> float:
        exact = [float(v) for name, v in rows[1:] if name.strip() == start]
        (v,) = exact or [float(v) for name, v in rows[1:] if name.strip().startswith(start)]
        return v

    first = value("ensemble: right clean and under every attack")  # the scoring draw
    vote_attack = "vote attack: margin PGD (50 steps, 1 restarts), EOT 2 with each draw's margin clamped at 0"
    assert first <= value(f"{vote_attack} (scored") <= value("clean")
    clean_vote = value("clean, under the majority vote of 3 draws")
    alone = [value(f"{name}: alone, under the majority vote of 3")
             for name in (vote_attack, "PGD, margin loss, 50 steps of alpha/2, 1 restarts, EOT 1")]
    assert value("ensemble under the majority vote of 3 draws") <= min(alone) <= max(alone) <= clean_vote
    assert value("ensemble: right under all 3 draws") <= min(first, value("ensemble under each of 3 noise draws"))
    assert 0 <= value("ensemble under the majority vote of 3 draws") <= 100


@pytest.mark.parametrize("name, argv, needle", [
    ("noise_draws.py", ["--tag", "ideal"], "--draws needs a model with read noise"),
    ("adv_diagnostics.py", ["--tag", "ideal", "--mean-field", "0"], "--mean-field needs a model with read noise"),
    ("noise_draws.py", ["--tag", "missing"], "model0.pt"),
    ("adv_diagnostics.py", ["--tag", "ideal", "--score-draws", "2"], "--score-draws needs a model with read noise"),
    ("adv_diagnostics.py", ["--tag", "noisy", "--images", "0"], "--images >= 1"),
    ("adv_diagnostics.py", ["--tag", "ideal", "--vote", "2"], "--vote needs a model with read noise"),
    ("adv_diagnostics.py", ["--tag", "noisy", "--vote", "1"], "need --vote K >= 2"),
])
def test_bad_input_exits_2_with_one_line(noisy_cell, name, argv, needle):
    out = _script(name, "--run-dir", str(noisy_cell), *argv)
    assert out.returncode == 2 and out.stdout == "" and "Traceback" not in out.stderr
    assert needle in out.stderr.strip().splitlines()[-1]  # one line (after argparse's usage, for a bad flag)
