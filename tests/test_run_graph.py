"""The stage graph of ``cimcosim run`` on a tiny config: every stage runs for real (ngspice chunks reused from
the session's small characterization), a rerun skips everything, a changed finetune setting reruns finetune,
attack and report only, an interrupted stage resumes, bad configs fail with one line, the report's links
resolve."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.graph import STAGE_NAMES, read_manifest, run_graph
from pipeline.runconfig import load_toml, merge, resolve

TINY = """
[run]
workers = 1

[characterize]      # the conftest small_run's settings: every ngspice chunk is reused
wl_ratios = [4.0, 10.0]
samples = 16
resolution_bits = 2
chunk_size = 16

[chips]
n_chips = 2

[train]
model = "test_vgg"
subset = 300
test_subset = 100
epochs = 1
batch = 50
rows = 32
lr = 3e-3

[finetune]
designs = ["sar:4"]
chips = "0-1"
iters = 2
batch = 50
eval_every = 1
eval_images = 50
train_subset = 300
cross_chips = 1
bn_batches = 1

[attack]
attacks = ["fgsm"]
n_images = 20

[noise_study]
model = "test_resnet"
bits = [4]
noise = [0.0, 0.5]
psq = ["none"]
adv_train = [false]
runs = 1
subset = 300
test_subset = 100
epochs = 1
batch = 50
attack_images = 30
attacker_images = 100
substitute_epochs = 1
eot = 2
bfa_max_flips = 3
bfa_attack_batch = 16
bfa_eval_images = 50
"""


def _cfg(tmp_path: Path, extra: str = ""):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY + extra)
    return resolve("quick", path, {})


@pytest.fixture(scope="module")
def graph_run(small_run, tmp_path_factory):
    run = tmp_path_factory.mktemp("graph") / "run"
    run.mkdir()
    shutil.copytree(small_run / "characterize" / "chunks", run / "characterize" / "chunks")
    cfg = _cfg(run.parent)
    seen: list[tuple[str, str]] = []
    run_graph(run, cfg, on_stage=lambda n, what: seen.append((n, what)))
    return run, cfg, seen


def test_all_stages_run_and_record_hashes(graph_run):
    run, _, seen = graph_run
    assert seen == [(n, "ran") for n in STAGE_NAMES]
    stages = read_manifest(run)["stages"]
    for name in STAGE_NAMES:
        entry = stages[name]
        assert entry["status"] == "done" and entry["outputs"], name
        for rel in entry["outputs"]:
            assert (run / rel).is_file(), rel
    assert stages["finetune"]["inputs"] == {"chips": stages["chips"]["outputs_hash"],
                                            "train": stages["train"]["outputs_hash"]}


def test_rerun_skips_and_a_changed_setting_reruns_only_its_dependents(graph_run):
    run, cfg, _ = graph_run
    seen: list[tuple[str, str]] = []
    run_graph(run, cfg, on_stage=lambda n, what: seen.append((n, what)))
    assert all(what == "skipped" for _, what in seen) and len(seen) == len(STAGE_NAMES)

    cfg.values["finetune"]["iters"] = 3  # the module's config from here on
    seen.clear()
    run_graph(run, cfg, on_stage=lambda n, what: seen.append((n, what)))
    assert {n for n, what in seen if what == "ran"} == {"finetune", "attack", "report"}


def test_interrupted_stage_resumes_without_redoing_finished_work(graph_run, monkeypatch):
    import pipeline.study_noise as sn

    run, cfg, _ = graph_run
    cfg.values["noise_study"]["runs"] = 2  # a new study config: every cell is redone
    calls: list[str] = []
    real = sn.run_cell

    def interrupted(run_dir, scfg, cell, key, threads):
        calls.append(cell.tag)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as a Ctrl-C (or kill) in the middle of the stage
        return real(run_dir, scfg, cell, key, threads)

    monkeypatch.setattr(sn, "run_cell", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_graph(run, cfg)
    assert read_manifest(run)["stages"]["noise_study"]["status"] == "running"
    first = run / "study_noise" / "cells" / f"{calls[0]}.json"
    stamp = first.stat().st_mtime_ns
    calls.clear()
    run_graph(run, cfg)
    assert read_manifest(run)["stages"]["noise_study"]["status"] == "done"
    assert len(calls) == 1 and first.stat().st_mtime_ns == stamp  # the finished cell was not redone


def test_report_links_resolve_and_list_every_figure(graph_run):
    run, _, _ = graph_run
    page = (run / "report" / "index.html").read_text()
    links = re.findall(r'src="([^"]+)"', page)
    assert links and all((run / "report" / link).is_file() for link in links)
    assert "http://" not in page and "https://" not in page
    import json

    summary = json.loads((run / "report" / "summary.json").read_text())
    figures = [f for s in summary["sections"] for f in s["figures"]]
    assert sorted(figures) == sorted(set(links))
    md = (run / "report" / "report.md").read_text()
    assert all(f"({f})" in md for f in figures)
    ids = {s["id"]: s["status"] for s in summary["sections"]}
    assert ids["sa_pass_rate"] == "ok" and ids["finetune"] == "ok" and ids["noise_table2"] == "ok"


def test_report_lists_stages_not_run(tmp_path):
    run = tmp_path / "empty"
    run.mkdir()
    assert main(["report", "--run-dir", str(run)]) == 0
    md = (run / "report" / "report.md").read_text()
    assert md.count("**not run**") >= 5 and "cimcosim characterize --run-dir DIR" in md


@pytest.mark.parametrize(("text", "needle"), [
    ("[train\nmodel = 1\n", "malformed TOML"),
    ("[train]\nmodell = 'x'\n", "unknown key [train] modell"),
    ("[chips]\nn_chips = 'many'\n", "[chips] n_chips = 'many' must be int"),
    ("[noise_study]\nbits = [0]\n", "bits=[0] must be integers in 1..8"),
    ("[finetune]\nseed = 3\n", "the root seed is [run] seed"),
])
def test_bad_config_fails_with_one_line_naming_key_and_file(tmp_path, capsys, text, needle):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    assert main(["run", "--run-dir", str(tmp_path / "r"), "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err and "bad.toml" in err
    assert not (tmp_path / "r" / "manifest.json").exists()


def test_flags_override_config_and_merged_config_is_written_back(tmp_path):
    from pipeline.runconfig import to_toml

    path = tmp_path / "c.toml"
    path.write_text("[run]\nseed = 5\n[chips]\nn_chips = 3\n")
    cfg = resolve("quick", path, {"chips": {"n_chips": 4}})
    assert cfg.seed == 5 and cfg.values["chips"]["n_chips"] == 4
    assert cfg.origin[("chips", "n_chips")] == "command line" and cfg.origin[("run", "seed")] == str(path)
    again = tmp_path / "again.toml"
    again.write_text(to_toml(cfg))
    assert merge([("again", load_toml(again))]).values == cfg.values


def test_presets_are_valid_and_paper_is_the_seeds_scale():
    quick, paper = resolve("quick", None, {}), resolve("paper", None, {})
    assert paper.values["characterize"]["samples"] == 1000 and paper.values["finetune"]["chips"] == "0-19"
    assert paper.values["noise_study"]["bits"] == (1, 2, 4)
    assert quick.values["characterize"]["samples"] < paper.values["characterize"]["samples"]


def test_noise_study_worst_case_is_below_each_attack(graph_run):
    # an image survives the worst case only if it survives both attacks of its run, so no column can exceed it
    import pandas as pd

    run, _, _ = graph_run
    res = pd.read_parquet(run / "study_noise" / "results.parquet")
    assert len(res) and (res.worst_acc <= res[["bb_pgd_acc", "wb_pgd_acc"]].min(axis=1) + 1e-12).all()
    assert (res[["bb_pgd_acc", "wb_pgd_acc"]].max(axis=1) <= res.clean_acc + 1e-12).all()
    assert "worst of both" in (run / "study_noise" / "table2.md").read_text()


def test_two_stages_drawing_one_figure_at_once_both_succeed(tmp_path, monkeypatch):
    """Finetunes of two designs redraw the tag's curves.png at once: each writes through its own temporary file."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from matplotlib.figure import Figure

    from pipeline.plots import save_figure

    both_written = threading.Barrier(2, timeout=30)
    savefig = Figure.savefig

    def savefig_then_wait(self, *args, **kwargs):  # both temporary files exist before either is moved
        savefig(self, *args, **kwargs)
        both_written.wait()

    monkeypatch.setattr(Figure, "savefig", savefig_then_wait)

    def draw(k: int) -> None:
        fig = Figure(figsize=(2, 2))
        fig.add_subplot().plot([0, 1], [0, k])
        save_figure(fig, tmp_path / "curves.png")

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(draw, (1, 2)))  # re-raises a writer's error
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["curves.png"]  # no temporary file left behind
