"""Network-stage commands fail on bad input with one line and exit 2, writing nothing; kill -9 loses only
the chips in flight."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from pipeline.checkpoint import load_checkpoint, save_checkpoint
from pipeline.cli import main


def _err(capsys, argv):
    code = main(argv)
    lines = capsys.readouterr().err.strip().splitlines()
    return code, lines[-1] if lines else ""


@pytest.fixture()
def run(trained_run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(trained_run, dst)
    return dst


def _ft(run, *extra):
    return ["finetune", "--run-dir", str(run), "--tag", "tiny", "--adc", "sar", "--wl", "4", "--chips", "0",
            "--iters", "2", "--batch", "20", "--eval-images", "40", "--train-subset", "100", "--workers", "1",
            *extra]


@pytest.mark.parametrize("argv, needle", [
    (["train", "--model", "nope"], "unknown model 'nope'"),
    (["train", "--model", "test_vgg", "--batch", "0"], "batch=0 must be a positive integer"),
    (["train", "--model", "test_vgg", "--lr", "-0.1"], "lr=-0.1 must be a finite number > 0"),
    (["train", "--model", "test_vgg", "--data", "cifar10:/no/such/folder"], "CIFAR-10 folder /no/such/folder"),
    (["train", "--model", "test_vgg", "--weight-bits", "9"], "weight_bits=9"),
    (["train", "--model", "vgg8", "--subset", "4", "--epochs", "1"], "does not fit fashion-mnist images"),
    (["train", "--model", "test_vgg", "--psq-encoding", "unipolar"], "give it with --psq"),
    (["train", "--model", "test_vgg", "--bn-recal", "-2"], "bn_recal_batches=-2"),
    (["train", "--model", "test_vgg", "--psq-ste-window", "4"], "give it with --psq"),
    (["train", "--model", "test_vgg", "--psq", "1bit", "--psq-ste-window", "-1"], "psq_ste_window=-1.0"),
    (["train", "--model", "test_vgg", "--psq-ste-smooth", "2"], "give it with --psq"),
    (["train", "--model", "test_vgg", "--psq", "1bit", "--psq-ste-smooth", "inf"], "psq_ste_smooth=inf"),
    (["train", "--model", "test_vgg", "--psq", "1bit", "--psq-ste-smooth", "2", "--psq-ste-window", "4"],
     "give one"),
])
def test_train_bad_input(capsys, tmp_path, argv, needle):
    code, line = _err(capsys, [argv[0], "--run-dir", str(tmp_path / "r"), *argv[1:]])
    assert code == 2 and line.startswith("cimcosim: error:") and needle in line, line
    assert not (tmp_path / "r" / "train").exists() or not any((tmp_path / "r" / "train").rglob("*.pt"))


@pytest.mark.parametrize("extra, needle", [
    (["--chips", "0-99"], "not in the table"),
    (["--batch", "0"], "batch=0 must be a positive integer"),
    (["--lr", "-1"], "lr=-1.0 must be a finite number > 0"),
])
def test_finetune_bad_arguments(capsys, run, extra, needle):
    argv = _ft(run)
    for flag, value in zip(extra[::2], extra[1::2], strict=True):
        if flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
    code, line = _err(capsys, argv)
    assert code == 2 and needle in line, line
    assert not (run / "finetune").exists() or not any((run / "finetune").rglob("*.p*"))


def test_finetune_unknown_design_and_missing_stages(capsys, run, tmp_path):
    argv = _ft(run)
    argv[argv.index("--wl") + 1] = "7"
    code, line = _err(capsys, argv)
    assert code == 2 and "design sar W/L=7 is not in" in line
    bare = tmp_path / "bare"
    shutil.copytree(run / "train", bare / "train")
    code, line = _err(capsys, _ft(bare))
    assert code == 2 and "cimcosim chips" in line
    code, line = _err(capsys, _ft(tmp_path / "nothing"))
    assert code == 2 and "cimcosim train" in line


def test_finetune_refuses_bad_checkpoints(capsys, run):
    path = run / "train/tiny/model0.pt"
    header, state = load_checkpoint(path, fix="")
    good = path.read_bytes()
    # a checkpoint of another model under this header
    from nn import create_model

    save_checkpoint(path, create_model("test_resnet").state_dict(), header)
    code, line = _err(capsys, _ft(run))
    assert code == 2 and "does not fit model 'test_vgg'" in line
    # a checkpoint of other settings: trained for a 4-bit ADC, the chips are 5-bit
    header4 = {**header, "cim": {**header["cim"], "adc": {**header["cim"]["adc"], "bits": 4}}}
    save_checkpoint(path, state, header4)
    code, line = _err(capsys, _ft(run))
    assert code == 2 and "trained for a 4-bit ADC" in line and "--adc-bits 5" in line
    # truncated
    path.write_bytes(good[: len(good) // 2])
    code, line = _err(capsys, _ft(run))
    assert code == 2 and "truncated or corrupt" in line
    # a pickle with code in it
    torch.save({"header": header, "state_dict": state, "payload": _Evil()}, path)
    code, line = _err(capsys, _ft(run))
    assert code == 2 and "not a weights-only checkpoint" in line
    assert not any((run / "finetune").rglob("chip_*.pt")) if (run / "finetune").exists() else True


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo owned",))


def test_kill_9_loses_only_the_chip_in_flight(run):
    cmd = [sys.executable, "-m", "pipeline.cli", *_ft(run)]
    cmd[cmd.index("--chips") + 1] = "0-2"
    cmd[cmd.index("--iters") + 1] = "6"
    design = run / "finetune/tiny/sar_wl4"
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600
    while not (design / "chip_0.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (design / "chip_0.pt").exists()
    mtime = (design / "chip_0.pt").stat().st_mtime_ns
    assert not any(p.name.endswith(".tmp") for p in design.iterdir() if p.name.startswith("chip_0"))
    assert main(cmd[3:]) == 0  # the same command again: resumes
    assert (design / "chip_0.pt").stat().st_mtime_ns == mtime
    assert all((design / f"chip_{k}.pt").exists() for k in range(3)) and (design / "results.parquet").exists()


def test_run_dir_that_is_not_a_directory_is_one_line(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code, line = _err(capsys, ["train", "--run-dir", str(blocker / "run"), "--model", "test_vgg", "--subset", "50",
                               "--test-subset", "20", "--epochs", "1"])
    assert code == 2 and line.startswith("cimcosim: error: cannot access") and "writable directory" in line, line
