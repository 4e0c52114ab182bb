"""The noise study's grid, its figure tables, and its bad-input errors (the study itself runs for real in
tests/test_run_graph.py's tiny graph)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nn.convert import cim_layers
from pipeline.cli import main
from pipeline.config import ConfigError
from pipeline.plots_noise import figure_tables, table2_markdown
from pipeline.study_noise import PSQ_BN_RECAL, Cell, StudyNoiseConfig, cell_key, cells, train_cfg

EXAMPLE = Path(__file__).parents[1] / "pipeline" / "examples" / "noise_table_psq1bit_synthetic.csv"


def test_grid_is_the_union_of_what_each_figure_needs():
    cfg = StudyNoiseConfig(bits=(1, 4), noise=(0.0, 2.0), psq=("none", "1bit", "3.5bit"))
    grid = {(c.bits, c.noise, c.psq, c.adv): c.bfa for c in cells(cfg)}
    for b in (1, 4):
        for n in ("0", "2"):
            for a in (False, True):
                assert (b, n, "none", a) in grid  # Fig. 3 / Table II
            assert (b, n, "3.5bit", True) in grid  # Fig. 4
            for p in ("none", "1bit", "3.5bit"):
                assert (b, n, p, False) in grid  # Fig. 5
        assert grid[(b, "0", "none", False)] and grid[(b, "2", "3.5bit", False)]  # Fig. 6
        assert grid[(b, "0", "1bit", False)] and grid[(b, "2", "1bit", False)]
        assert (b, "0", "1bit", True) not in grid  # no figure asks for adversarially trained 1-bit PSQ
    assert sum(grid.values()) == 8
    assert len({c.tag for c in cells(cfg)}) == len(grid)


def test_eps_sets_every_pgd_and_only_adversarial_cells_retrain():
    base = StudyNoiseConfig(model="test_resnet", bits=(4,), noise=(0.0,), psq=("none",))
    strong = replace(base, eps=0.1)
    assert strong.alpha == pytest.approx(0.1 / 0.03 * 2 / 255)
    clean, adv = Cell(4, "0", "none", False), Cell(4, "0", "none", True)
    assert train_cfg(strong, clean) == train_cfg(base, clean)  # a clean-trained model is reused across budgets
    fewer = replace(base, adv_steps=5)  # and across adversarial-training settings
    assert train_cfg(fewer, clean) == train_cfg(base, clean) and cell_key(fewer, clean) == cell_key(base, clean)
    assert train_cfg(fewer, adv).adv_steps == 5 and cell_key(fewer, adv) != cell_key(base, adv)
    # adversarial training's revision retrains adversarial cells only
    assert "adv_train_version" in train_cfg(base, adv).to_dict()
    assert "adv_train_version" not in train_cfg(base, clean).to_dict()
    assert (train_cfg(strong, adv).adv_eps, train_cfg(strong, adv).adv_alpha) == (0.1, strong.alpha)
    assert cell_key(strong, clean) != cell_key(base, clean)  # but attacked again


def test_each_cell_trains_what_it_names():
    cfg = StudyNoiseConfig(model="test_resnet", bits=(1, 2), noise=(0.0, 1.5), psq=("none", "2bit"))
    for c in cells(cfg):
        t = train_cfg(cfg, c)
        assert t.weight_bits == t.input_bits == c.bits
        assert t.noise_sigma_psum == float(c.noise) and t.adv_train == c.adv
        assert t.psq == (None if c.psq == "none" else c.psq)
        assert t.act == ("relu" if c.bits == 1 else "celu")  # binary activations are {0, 1}


def test_psq_cells_reestimate_batchnorm_by_default_and_the_rest_keep_their_keys():
    cfg = StudyNoiseConfig(model="test_resnet", bits=(4,), noise=(0.0,), psq=("none", "3.5bit"))
    none, psq = Cell(4, "0", "none", False), Cell(4, "0", "3.5bit", False)
    assert train_cfg(cfg, psq).bn_recal_batches == PSQ_BN_RECAL > 0
    assert "bn_recal_batches" not in train_cfg(cfg, none).to_dict()  # cells made before the option keep their keys
    every = replace(cfg, bn_recal_batches=2)  # an explicit setting reaches every cell, 0 included
    assert train_cfg(every, none).bn_recal_batches == train_cfg(every, psq).bn_recal_batches == 2
    assert train_cfg(replace(cfg, bn_recal_batches=0), psq).bn_recal_batches == 0
    assert cell_key(every, none) != cell_key(cfg, none)
    ste = replace(cfg, psq_ste_window=12.0)  # the estimator reaches the PSQ cells only
    assert train_cfg(ste, psq).psq_ste_window == 12.0 and train_cfg(ste, none) == train_cfg(cfg, none)
    assert "psq_ste_window" not in train_cfg(cfg, psq).to_dict()


def test_first_input_bits_reaches_every_cell_and_leaves_old_keys_alone():
    from pipeline.train import TrainConfig

    base = StudyNoiseConfig(model="test_resnet", bits=(1,), noise=(0.0,), psq=("none",))
    f8 = replace(base, first_input_bits=8)
    cell = Cell(1, "0", "none", False)
    t = train_cfg(f8, cell)
    assert t.first_input_bits == 8 and t.cim_config().quant.first_input_bits == 8
    assert "first_input_bits" not in train_cfg(base, cell).to_dict()  # runs made before the option keep their keys
    assert cell_key(f8, cell) != cell_key(base, cell)
    with pytest.raises(Exception, match="first_input_bits=0"):
        TrainConfig(model="test_resnet", first_input_bits=0)


def test_an_attack_that_helps_the_model_cannot_raise_its_accuracy():
    # label leaking: an adversarially trained model may classify PGD's true-label images better than clean ones
    # (measured: 85 % vs 28 %); the attacker could submit the clean image instead, so the score is capped by it
    import torch

    from nn.training import predict
    from pipeline.study_noise import survivors

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)).eval()
    x, y = torch.rand(60, 1, 4, 4), torch.randint(0, 3, (60,))
    pred = predict(model, x)
    ok = pred == y
    # the "attack" swaps each image for one the model labels as that image's true class, where one exists
    helpful = torch.stack([x[(pred == y[i]).nonzero()[0, 0]] if (pred == y[i]).any() else x[i] for i in range(60)])
    final_iterate = float((predict(model, helpful) == y).float().mean())
    assert final_iterate > float(ok.float().mean())  # scoring the attacked images alone rewards the attack
    def robust_accuracy(adv):
        return float(survivors(model, adv, y, ok).float().mean())

    assert robust_accuracy(helpful) == pytest.approx(float(ok.float().mean()))
    assert robust_accuracy(x) == pytest.approx(float(ok.float().mean()))  # a zero perturbation
    assert robust_accuracy(x[torch.randperm(60)]) <= float(ok.float().mean())


def test_figure_tables_average_over_runs():
    cfg = StudyNoiseConfig(bits=(1,), noise=(0.0, 1.0), psq=("none", "1bit"), runs=2)
    rows = []
    for c in cells(cfg):
        for r in range(2):
            rows.append({"model": "m", "bits": c.bits, "noise": c.noise, "psq": c.psq, "adv_train": c.adv, "run": r,
                         "clean_acc": 0.8, "bb_pgd_acc": 0.2 + 0.1 * r + (0.05 if c.noise == "1" else 0),
                         "wb_pgd_acc": 0.01, "worst_acc": 0.005, "bfa_flips": float(10 + r) if c.bfa else np.nan,
                         "substitute_agreement": 0.9, "tag": c.tag})
    tabs = figure_tables(pd.DataFrame(rows), cfg)
    f3 = tabs["fig3"]
    noisy = f3[(f3.series == "noise 1") & (f3.metric == "bb_pgd_acc")].iloc[0]
    assert noisy["mean"] == pytest.approx(0.30) and noisy["std"] == pytest.approx(0.05) and noisy.n == 2
    f6 = tabs["fig6"][tabs["fig6"].metric == "bfa_flips"]
    assert set(f6.series) == {"baseline", "Bin. IS", "Bin. IS IMC"}  # no 3.5-bit PSQ in this grid: no "IMC"
    assert (f6["mean"] == 10.5).all()
    md = table2_markdown(tabs["table2"], cfg)
    assert "| 1 | 80.0 | 30.0 | 1.0 | 0.5 |" in md
    only_psq = figure_tables(pd.DataFrame([r for r in rows if r["psq"] != "none"]), cfg)
    assert only_psq["table2"].empty and not only_psq["fig5"].empty
    md = table2_markdown(only_psq["table2"], cfg)  # one line saying what is missing, not a table of dashes
    assert len(md.splitlines()) == 1 and "--psq none" in md and "|" not in md


@pytest.mark.parametrize(("argv", "needle"), [
    (["--bits", "0"], "bits=[0] must be integers in 1..8"),
    (["--bits", "9"], "must be integers in 1..8"),
    (["--runs", "0"], "runs=0 must be a positive integer"),
    (["--psq", "4bit"], "unknown scheme(s) ['4bit']"),
    (["--noise", "-1"], "must be sigmas >= 0"),
    (["--eps", "0"], "eps=0.0 must be in (0, 1]"),
    (["--eps", "1.5"], "eps=1.5 must be in (0, 1]"),
    (["--first-input-bits", "9"], "first_input_bits=9 must be an integer in 1..8"),
    (["--bn-recal", "-1"], "bn_recal_batches=-1 must be an integer >= 0"),
    (["--psq-ste-window", "-2"], "psq_ste_window=-2.0 must be a number >= 0"),
    (["--noise-table", "__ROWS__"], "sum to 1"),
    (["--noise-table", str(EXAMPLE), "--psq", "none"], "study-noise cell"),  # a 1-bit-PSQ table on a 5-bit ADC
])
def test_bad_input_one_line_exit_2_nothing_written(tmp_path, capsys, argv, needle):
    if "__ROWS__" in argv:
        bad = tmp_path / "bad.csv"
        bad.write_text("psum,p0,p1\n0,0.5,0.6\n1,0.5,0.5\n")
        argv = [a.replace("__ROWS__", str(bad)) for a in argv]
    run = tmp_path / "run"
    assert main(["study-noise", "--run-dir", str(run), "--model", "test_resnet", "--workers", "1", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err
    assert not (run / "train").exists() and not (run / "study_noise").exists()


def test_growing_the_grid_reuses_finished_cells(tmp_path, monkeypatch):
    # the cell key covers the cell's training and attack settings, not the rest of the grid
    import pipeline.plots_noise as plots_noise
    import pipeline.study_noise as sn
    from pipeline.executor import InlineExecutor

    ran: list[str] = []

    def fake_cell(run_dir, cfg, cell, key, threads):  # stands in for training + attacks (tested elsewhere)
        ran.append(cell.tag)
        rows = [{"model": cfg.model, "bits": cell.bits, "noise": cell.noise, "psq": cell.psq, "adv_train": cell.adv,
                 "run": 0, "clean_acc": 0.9, "bb_pgd_acc": 0.5, "wb_pgd_acc": 0.4, "worst_acc": 0.3,
                 "bfa_flips": float("nan"), "substitute_agreement": 0.8, "tag": cell.tag}]
        sn.write_json(sn._cell_path(Path(run_dir), cell), {"key": key, "rows": rows})
        return rows

    monkeypatch.setattr(sn, "run_cell", fake_cell)
    monkeypatch.setattr(plots_noise, "write_figures", lambda *a, **k: None)
    small = StudyNoiseConfig(model="test_resnet", bits=(4,), noise=(0.0, 2.0), psq=("none",), adv_train=(False,))
    sn.study_noise(tmp_path, small, InlineExecutor())
    first = list(ran)
    assert sorted(first) == sorted(c.tag for c in cells(small))
    ran.clear()
    grown = StudyNoiseConfig(model="test_resnet", bits=(4,), noise=(0.0, 2.0, 4.0), psq=("none",),
                             adv_train=(False, True))
    res = sn.study_noise(tmp_path, grown, InlineExecutor())
    assert set(ran) == {c.tag for c in cells(grown)} - set(first) and ran
    assert set(res.tag) == {c.tag for c in cells(grown)}
    ran.clear()
    sn.study_noise(tmp_path, replace(grown, eot=3), InlineExecutor())  # an attack setting: every cell again
    assert sorted(ran) == sorted(c.tag for c in cells(grown))


def test_noise_free_control_reads_the_same_adc(tmp_path):
    # noise must be the only difference between a noisy cell and its control: both train and test on the chip path
    from pipeline.bfa import model0_on_its_path
    from pipeline.train import train

    cfg = StudyNoiseConfig(model="test_resnet", bits=(4,), noise=(0.0, 2.0), psq=("none", "1bit"), subset=100,
                           test_subset=100, epochs=1, batch=50)
    ctrl, noisy, split = Cell(4, "0", "none", False), Cell(4, "2", "none", False), Cell(4, "0", "1bit", False)
    assert train_cfg(cfg, ctrl).chip_path and train_cfg(cfg, noisy).chip_path
    assert not train_cfg(cfg, noisy).chip_train and not train_cfg(cfg, split).chip_train  # their keys unchanged
    doc = train(tmp_path, train_cfg(cfg, ctrl), tag=ctrl.tag)
    assert doc["path"] == "chip"
    model, _, chip = model0_on_its_path(tmp_path / "train" / ctrl.tag / "model0.pt")
    assert chip and all(not layer.digital for layer in cim_layers(model))


def test_warm_start_trains_the_base_first_and_starts_every_other_cell_from_it(tmp_path, monkeypatch):
    import pipeline.plots_noise as plots_noise
    import pipeline.study_noise as sn
    from pipeline.executor import InlineExecutor

    cold = StudyNoiseConfig(model="test_resnet", bits=(4,), noise=(0.0, 2.0), psq=("none", "1bit"),
                            adv_train=(False,), subset=100, test_subset=100, epochs=1, batch=50)
    warm = replace(cold, warm_start=True)
    base = sn.base_cell(Cell(4, "2", "1bit", False))
    assert base == Cell(4, "0", "none", False)
    for c in cells(warm):
        if replace(c, bfa=False) == base:
            assert train_cfg(warm, c).init_from is None and cell_key(warm, c) == cell_key(cold, c)
        else:
            assert train_cfg(warm, c).init_from == base.tag and cell_key(warm, c) != cell_key(cold, c)
    seen: list[bool] = []

    def fake_cell(run_dir, cfg, cell, key, threads):  # the base's model0 must exist before any cell runs
        seen.append((Path(run_dir) / "train" / base.tag / "model0.pt").is_file())
        return [{"model": cfg.model, "bits": cell.bits, "noise": cell.noise, "psq": cell.psq, "adv_train": cell.adv,
                 "run": 0, "clean_acc": 0.9, "bb_pgd_acc": 0.5, "wb_pgd_acc": 0.4, "worst_acc": 0.3,
                 "bfa_flips": float("nan"), "substitute_agreement": 0.8, "tag": cell.tag}]

    monkeypatch.setattr(sn, "run_cell", fake_cell)
    monkeypatch.setattr(plots_noise, "write_figures", lambda *a, **k: None)
    sn.study_noise(tmp_path, warm, InlineExecutor())
    assert seen and all(seen) and len(seen) == len(cells(warm))


def test_first_layer_digital_reaches_every_cell_and_leaves_old_keys_alone():
    base = StudyNoiseConfig(model="test_resnet", bits=(4,), noise=(0.0, 1.0), psq=("none", "1bit"))
    pinned = replace(base, first_layer_digital=True)
    for c in cells(base):
        assert "first_layer_digital" not in train_cfg(base, c).to_dict()
        assert train_cfg(pinned, c).cim_config().array.first_layer_digital
        assert cell_key(pinned, c) != cell_key(base, c)


def test_psq_cells_drive_xnor_rows_and_the_unipolar_control_is_one_flag():
    base = StudyNoiseConfig(model="test_resnet", bits=(4,), noise=(0.0,), psq=("none", "1bit"), adv_train=(False,))
    control = replace(base, psq_encoding="unipolar")
    for c in cells(base):
        array = train_cfg(base, c).cim_config().array
        if c.psq == "none":  # uniform-ADC cells know nothing of the encoding: same runs, same keys
            assert not array.xnor and "psq_encoding" not in train_cfg(base, c).to_dict()
            assert cell_key(control, c) == cell_key(base, c)
        else:
            assert array.xnor and array.signed_psum and array.rows == 256
            assert not train_cfg(control, c).cim_config().array.xnor
            assert cell_key(control, c) != cell_key(base, c)
    with pytest.raises(ConfigError, match="psq_encoding"):
        replace(base, psq_encoding="ternary")


def test_square_attack_runs_beside_the_pgds_and_leaves_keys_alone_when_off(tmp_path):
    import pipeline.study_noise as sn
    from pipeline.executor import InlineExecutor

    off = StudyNoiseConfig(model="test_resnet", bits=(4,), noise=(0.0, 2.0), psq=("none",), adv_train=(False,),
                           runs=1, subset=150, test_subset=100, epochs=1, batch=50, attack_images=24,
                           attacker_images=100, substitute_epochs=1, eot=2, eps=0.1)
    on = replace(off, square_queries=40)
    for c in cells(off):  # off, its window setting is no part of a cell's key (runs before the option keep theirs)
        assert cell_key(replace(off, square_p=0.9), c) == cell_key(off, c) != cell_key(on, c)
    res = sn.study_noise(tmp_path, on, InlineExecutor())
    assert len(res) == 2 and res.square_acc.notna().all()
    assert (res.square_acc <= res.clean_acc).all()  # scored like the PGDs: right clean and right attacked
    assert (res.square_acc < res.clean_acc).any()  # eps 0.1 on a one-epoch model: it finds examples
    md = (tmp_path / "study_noise" / "table2.md").read_text()
    assert "| Square Attack |" in md and md.count("|---") == 11
    assert "Square" not in table2_markdown(figure_tables(res, off)["table2"], off)
    with pytest.raises(ConfigError, match="square_queries=-1"):
        replace(off, square_queries=-1)
    with pytest.raises(ConfigError, match="square_p=0"):
        replace(off, square_p=0)


def test_a_figure_the_grid_has_no_cells_for_is_not_drawn_nor_left_from_an_earlier_grid(tmp_path):
    from pipeline.plots_noise import write_figures

    def rows(cfg):
        return pd.DataFrame([{"model": "m", "bits": c.bits, "noise": c.noise, "psq": c.psq, "adv_train": c.adv,
                              "run": 0, "clean_acc": 0.8, "bb_pgd_acc": 0.3, "wb_pgd_acc": 0.2, "worst_acc": 0.1,
                              "bfa_flips": 12.0 if c.bfa else np.nan, "substitute_agreement": 0.9, "tag": c.tag}
                             for c in cells(cfg)])

    full = StudyNoiseConfig(bits=(1,), noise=(0.0, 1.0), psq=("none", "1bit", "3.5bit"), runs=1)
    write_figures(rows(full), full, tmp_path, {})
    assert all((tmp_path / f"fig{i}.png").is_file() for i in (3, 4, 5, 6))
    clean = replace(full, adv_train=(False,))  # no adversarially trained cells: no Fig. 4
    write_figures(rows(clean), clean, tmp_path, {})
    assert [(tmp_path / f"fig{i}.png").exists() for i in (3, 4, 5, 6)] == [True, False, True, True]
    fig4 = replace(full, psq=("3.5bit",), adv_train=(True,))  # Fig. 4's cells alone
    write_figures(rows(fig4), fig4, tmp_path, {})
    assert [(tmp_path / f"fig{i}.png").exists() for i in (3, 4, 5, 6)] == [False, True, False, False]
