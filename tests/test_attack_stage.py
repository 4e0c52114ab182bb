"""The attack stage end to end on a tiny run: seed 001's cases, controls, the adaptive attacker, resume,
determinism and bad input."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from pipeline.attack import AttackConfig, attack, read_results
from pipeline.cli import main
from pipeline.executor import make_executor
from pipeline.finetune import FinetuneConfig, finetune

ATTACK = {"tag": "tiny", "adc": "sar", "wl_ratio": 10.0, "attack": "cw-l2", "n_images": 24, "max_iterations": 20,
          "binary_search_steps": 3, "initial_const": 1.0, "eot": 1}


@pytest.fixture(scope="module")
def attacked(trained_run, tmp_path_factory):
    run = tmp_path_factory.mktemp("atk") / "run"
    shutil.copytree(trained_run, run)
    with make_executor(1) as ex:
        finetune(run, FinetuneConfig(tag="tiny", adc="sar", wl_ratio=10.0, chips=(0, 1, 2), iters=30, batch=50,
                                     lr=1e-3, eval_images=100, train_subset=600, cross_chips=0, bn_batches=0), ex)
        res = attack(run, AttackConfig(**ATTACK), ex)
    return run, res


def test_cases_controls_and_outputs(attacked):
    run, res = attacked
    out = run / "attack/tiny/sar_wl10/cw-l2"
    cases = set(res.case)
    assert {"case 1", "case 2", "case 3", "white-box", "adaptive", "control: offsets only",
            "control: software to nominal chip"} <= cases
    wb = res[res.case == "white-box"].iloc[0]
    assert wb.acc_after < wb.acc_before  # the attacked chip itself is fooled
    assert res[res.source == "model0"].source_success.iloc[0] > 0.5
    own = res[res.case == "adaptive: own chip"]  # the EOT attacker's examples on the chip they were made on
    assert list(own.target) == ["chip_c2"] and (own.acc_after < own.acc_before).all()
    assert set(res[res.target == "chip_c2"].source) == set(res.source)  # and every source's transfer to it
    assert (res.l2_median.dropna() > 0).all() and (res.acc_after <= 1).all()
    table = (out / "table1.md").read_text()
    assert "Case 1: attack on chip1" in table and "seed 001" in table and "adaptive" in table
    assert (out / "transfer.png").stat().st_size > 0 and (out.parent / "table2.md").is_file()
    blob = torch.load(out / "adv_model0.pt", weights_only=True)
    adv = blob["state_dict"]["adversarial"]
    assert adv.shape == (24, 1, 28, 28) and adv.min() >= 0 and adv.max() <= 1


def test_rerun_reuses_sources_and_is_deterministic(attacked, tmp_path, caplog):
    run, res = attacked
    out = run / "attack/tiny/sar_wl10/cw-l2"
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob("adv_*.pt")}
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    shutil.rmtree(copy / "attack")
    with make_executor(1) as ex:
        again = attack(run, AttackConfig(**ATTACK), ex)
        with caplog.at_level(logging.INFO, logger="pipeline.attack"):
            fresh = attack(copy, AttackConfig(**ATTACK), ex)
    msgs = [r.getMessage() for r in caplog.records]
    made = [m.split(" on ")[1].split(" done")[0] for m in msgs if "examples on" in m]
    # digital sources (cheap) are made before any chip or EOT source (an interrupt keeps cases 1 and 2)
    assert made[:2] == ["model0", "model1_c0"] and len(made) == len(set(res.source))
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("adv_*.pt")} == mtimes
    pd.testing.assert_frame_equal(again, res)
    pd.testing.assert_frame_equal(fresh, res)
    pd.testing.assert_frame_equal(read_results(out / "results.parquet"), res)


def test_without_the_white_box_source_the_transfer_sources_are_reused(attacked, tmp_path, caplog):
    run, res = attacked
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    with make_executor(1) as ex, caplog.at_level(logging.INFO, logger="pipeline.attack"):
        less = attack(copy, AttackConfig(**ATTACK, white_box=False), ex)
    assert not [r for r in caplog.records if "examples on" in r.getMessage()]  # every source reused
    assert "chip_c0" not in set(less.source) and "white-box" not in set(less.case)
    kept = res[res.source != "chip_c0"].reset_index(drop=True)
    pd.testing.assert_frame_equal(less[kept.columns].reset_index(drop=True), kept, check_dtype=False)
    assert "Case 1: attack on chip1" in (copy / "attack/tiny/sar_wl10/cw-l2/table1.md").read_text()


def test_adaptive_attacker_requiring_every_chip_keeps_only_examples_that_fool_them_all(attacked, tmp_path):
    """``eot_success="all"``: a separate source ``eot2-all`` beside the mean attacker's, whose every example (where
    one was found) fools both chips it was made on."""
    from nn.attacks import norms
    from nn.training import predict
    from pipeline.config import ConfigError
    from pipeline.deployments import Design

    run, _ = attacked
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    mean_eot = copy / "attack/tiny/sar_wl10/cw-l2/adv_eot1.pt"
    before = mean_eot.stat().st_mtime_ns
    # a longer search than the fixture's and more images: the tiny chips are right on both for few of them
    cfg = AttackConfig(**{**ATTACK, "eot": 2, "n_images": 48, "max_iterations": 60, "binary_search_steps": 5},
                       eot_chips=(1, 2), eot_success="all", cases=(1,), white_box=False)
    with make_executor(1) as ex:
        res = attack(copy, cfg, ex)
    assert mean_eot.stat().st_mtime_ns == before  # the mean attacker's examples stay beside the new source
    own = res[res.case == "adaptive: own chip"]
    assert set(own.source) == {"eot2-all"} and set(own.target) == {"chip_c1", "chip_c2"}
    assert res[(res.source == "eot2-all") & (res.target == "chip_c0")].case.tolist() == ["adaptive"]
    blob = torch.load(copy / "attack/tiny/sar_wl10/cw-l2/adv_eot2-all.pt", weights_only=True)["state_dict"]
    x, adv, y = blob["images"], blob["adversarial"], blob["labels"]
    found = (adv - x).flatten(1).abs().amax(1) > 0
    design = Design(copy, "tiny", "sar", 10.0, "cpu")
    assert found.any()
    right, fooled = found.clone().fill_(True), found.clone().fill_(True)
    for chip in ("chip_c1", "chip_c2"):
        assert (predict(design.model(chip), adv[found]) != y[found]).all()
        right &= predict(design.model(chip), x) == y
        fooled &= predict(design.model(chip), adv) != y
    assert (right & fooled).any()
    # its success and sizes are over the images right on both its chips whose example fools both
    row = res[res.source == "eot2-all"].iloc[0]
    assert row.source_success == pytest.approx(float((right & fooled).sum() / right.sum()))
    assert row.l2_median == pytest.approx(float(norms(adv, x)["l2"][right & fooled].median()), rel=1e-6)
    with pytest.raises(ConfigError, match="eot_success='any'"):
        AttackConfig(**ATTACK, eot_success="any")
    # benchmarks/eot_transfer.py counts the same images, and of those right on chip 1 the ones it gets wrong
    chip1 = design.model("chip_c0")
    on_chip1 = right & fooled & (predict(chip1, x) == y)
    rows = _script("eot_transfer.py", copy, "tiny")
    assert rows.returncode == 0, rows.stderr
    assert _script("eot_transfer.py", copy, "nothing").returncode == 2
    line = next(r for r in rows.stdout.splitlines() if "| eot2-all |" in r)
    assert line.split(" | ")[3:] == [str(int(right.sum())), str(int((right & fooled).sum())), str(int(on_chip1.sum())),
                                     f"{int((on_chip1 & (predict(chip1, adv) != y)).sum())} |"]


@pytest.mark.parametrize("extra, needle", [
    (["--attack", "cw-l3"], "unknown attack 'cw-l3'"),
    (["--attack", "pgd", "--eps", "0"], "eps=0.0 must be in (0, 1]"),
    (["--attack", "pgd", "--eps", "1.5"], "eps=1.5 must be in (0, 1]"),
    (["--attack", "pgd", "--n-images", "0"], "n_images=0 must be a positive integer"),
    (["--attack", "pgd", "--target-chip", "3"], "chip 3 of sar W/L=10 is not finetuned yet"),
    (["--attack", "pgd", "--eot-chips", "0-1"], "holds the target chip 0"),
    (["--attack", "pgd", "--eot-chips", "1", "--eot", "2"], "names 1 chips but eot=2"),
    (["--attack", "pgd", "--eot-chips", "2-3"], "chip 3 of sar W/L=10 is not finetuned yet"),
    (["--attack", "pgd", "--eot", "1", "--eot-success", "any"], "eot_success='any': choose from mean, all"),
    (["--attack", "pgd", "--eot-success", "all"], "turn it on with --eot K or --eot-chips"),
])
def test_attack_bad_input(capsys, attacked, extra, needle):
    run, _ = attacked
    code = main(["attack", "--run-dir", str(run), "--tag", "tiny", "--adc", "sar", "--wl", "10", "--workers", "1",
                 *extra])
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and line.startswith("cimcosim: error:") and needle in line, line
    assert not (run / "attack/tiny/sar_wl10/pgd_eps0.03").exists()


def _script(name: str, run: Path, tag: str) -> subprocess.CompletedProcess[str]:
    """Run one of benchmarks/ on a run folder."""
    return subprocess.run([sys.executable, str(Path(__file__).parents[1] / "benchmarks" / name), "--run-dir", str(run),
                           "--tag", tag], capture_output=True, text=True, timeout=300)


def test_attack_summary_prints_the_runs_rows(attacked):
    """benchmarks/attack_summary.py (the README's Table 1/2 layout) reads the stage's results as written."""
    run, res = attacked

    def summary(tag: str) -> subprocess.CompletedProcess[str]:
        return _script("attack_summary.py", run, tag)

    proc = summary("tiny")
    assert proc.returncode == 0, proc.stderr
    rows = {line.split(" | ")[0].lstrip("| "): line.rstrip(" |").split(" | ")[1] for line in proc.stdout.splitlines()
            if line.startswith("| ") and " | " in line}
    case1 = res[res.case == "case 1"].acc_after.iloc[0]
    own = res[res.case == "adaptive: own chip"].acc_after.mean()
    assert rows["case 1: model0 -> chip 1"] == f"{100 * case1:.0f} %"
    assert rows["adaptive: EOT examples -> the chips they were made on (mean)"] == f"{100 * own:.0f} %"
    empty = summary("nothing")
    assert empty.returncode == 2 and "run `cimcosim attack` first" in empty.stderr
