"""Bad input fails fast with one clear line and exit code 2, before any long work starts."""

from __future__ import annotations

import json

import pytest

from pipeline.cli import main


def _err(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err[-1] if err else ""


@pytest.mark.parametrize("extra, needle", [
    (["--samples", "0"], "samples=0 must be a positive integer"),
    (["--wl", "-2"], "invalid W/L -2"),
    (["--wl", "nan"], "invalid W/L nan"),
    (["--tech", "tsmc40"], "unknown technology 'tsmc40'"),
    (["--workers", "0"], "--workers 0 must be >= 1"),
])
def test_invalid_arguments(capsys, tmp_path, extra, needle):
    code, line = _err(capsys, ["characterize", "--run-dir", str(tmp_path / "r"), *extra])
    assert code == 2 and needle in line and line.startswith("cimcosim: error:")
    assert not (tmp_path / "r" / "characterize" / "samples.parquet").exists()


def _tech_file(tmp_path, **over):
    card = tmp_path / "card.inc"
    card.write_text(".model NMOS_X nmos level=54 version=4.8 toxe=notanumber\n")
    data = {"name": "mine", "model_files": ["card.inc"], "nmos_model": "NMOS_X", "pmos_model": "PMOS_X",
            "vdd_v": 1.0, "lmin_m": 5e-8, "avt_nmos_v_m": 2e-9, "avt_pmos_v_m": 2e-9}
    data.update(over)
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.spice
def test_model_card_ngspice_rejects(capsys, tmp_path):
    code, line = _err(capsys, ["characterize", "--run-dir", str(tmp_path / "r"), "--tech", str(_tech_file(tmp_path))])
    assert code == 2 and "ngspice rejected technology 'mine'" in line


@pytest.mark.parametrize("over, needle", [
    ({"vdd_v": "1.0; .include /etc/passwd"}, "vdd_v"),
    ({"nmos_model": "NMOS_X\n.end"}, "not a SPICE model name"),
    ({"model_files": ["missing.inc"]}, "not found"),
    ({"surprise": 1}, "unknown keys"),
])
def test_malformed_technology_file(capsys, tmp_path, over, needle):
    code, line = _err(capsys, ["characterize", "--run-dir", str(tmp_path / "r"), "--tech",
                               str(_tech_file(tmp_path, **over))])
    assert code == 2 and needle in line


def test_missing_ngspice_names_setup_script(tmp_path):
    """A real missing library (PySpice pointed at a path that does not exist), in a fresh process."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, NGSPICE_LIBRARY_PATH=str(tmp_path / "no" / "libngspice.so"))
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "characterize", "--run-dir", str(tmp_path / "r")],
                          env=env, capture_output=True, text=True, timeout=120)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2, proc.stderr
    assert last.startswith("cimcosim: error: ngspice shared library not found") and "ngspice_setup.sh" in last


@pytest.mark.spice
def test_run_until_chips_chains_the_circuit_stages(capsys, tmp_path):
    """The circuit half of the README's main job, on a tiny sample count (tests/test_run_graph.py runs it all)."""
    run = tmp_path / "r"
    argv = ["run", "--run-dir", str(run), "--samples", "2", "--n-chips", "2", "--workers", "2", "--until", "chips"]
    assert main(argv) == 0
    for rel in ("characterize/pass_rate.parquet", "fit/offset_model.json", "chips/offsets.parquet",
                "chips/validation.json"):
        assert (run / rel).is_file(), rel
    code, line = _err(capsys, ["chips", "--run-dir", str(run), "--n-chips", "0"])
    assert code == 2 and "n_chips=0 must be a positive integer" in line
    code, line = _err(capsys, ["fit", "--run-dir", str(tmp_path / "empty")])
    assert code == 2 and "cimcosim characterize" in line


@pytest.mark.parametrize("argv", [
    ["characterize"], ["run"], ["train", "--model", "test_vgg", "--subset", "200"], ["report"],
    ["study-noise", "--model", "test_resnet", "--bits", "4"],
])
def test_run_dir_that_cannot_be_created_fails_before_any_work(capsys, tmp_path, argv):
    blocker = tmp_path / "a_file"
    blocker.write_text("")  # a folder cannot be made inside a regular file, as root or not
    code, line = _err(capsys, [argv[0], "--run-dir", str(blocker / "run"), *argv[1:]])
    assert code == 2 and line.startswith("cimcosim: error: cannot access") and "--run-dir" in line
    assert blocker.read_text() == ""
