"""Train and finetune stages on real data and real (SPICE-derived) chip tables, tiny models."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
import torch

from nn.convert import set_digital
from nn.training import predict
from pipeline.artifacts import read_json, read_table
from pipeline.checkpoint import load_checkpoint, load_model
from pipeline.config import ConfigError, config_hash
from pipeline.executor import make_executor
from pipeline.finetune import CROSS, RESULTS, FinetuneConfig, design_cim, finetune
from pipeline.offset_table import OffsetTable
from pipeline.train import HISTORY, train, train_config

FT = {"tag": "tiny", "adc": "sar", "wl_ratio": 4.0, "chips": (0, 1), "iters": 30, "batch": 50, "lr": 1e-3,
      "eval_images": 300, "train_subset": 600, "eval_every": 15, "cross_chips": 1}


def test_training_loss_falls_and_outputs_are_complete(trained_run):
    out = trained_run / "train" / "tiny"
    hist, _ = read_table(out / "history.parquet", HISTORY, fix="")
    assert list(hist.epoch) == [0, 1, 2, 3, 4]
    assert hist.loss.iloc[-1] < hist.loss.iloc[1] and hist.test_acc.iloc[-1] > 0.25  # chance is 0.1
    metrics = read_json(out / "metrics.json", fix="")
    assert metrics["test_acc"] == pytest.approx(hist.test_acc.iloc[-1]) and metrics["inputs"]
    header, state = load_checkpoint(out / "model0.pt", fix="", kind="model0")
    assert header["model"] == "test_vgg" and header["cim"]["array"]["rows"] == 32 and "features.0.act_max" in state
    torch.load(out / "model0.pt", weights_only=True)  # plain weights_only load works too
    assert (out / "curve.png").stat().st_size > 0 and not (out / "state.pt").exists()


def test_training_resumes_after_interrupt_bit_for_bit(tmp_path, tiny_train):
    cfg = train_config(**{**tiny_train, "subset": 200, "epochs": 3})

    class Stop(Exception):
        pass

    def stop_after_first(epoch, _total):
        if epoch == 1:
            raise Stop

    with pytest.raises(Stop):
        train(tmp_path / "a", cfg, progress=stop_after_first)
    assert (tmp_path / "a/train/test_vgg/state.pt").is_file()
    resumed = train(tmp_path / "a", cfg)
    straight = train(tmp_path / "b", cfg)
    assert resumed["test_acc"] == straight["test_acc"]
    _, sa = load_checkpoint(tmp_path / "a/train/test_vgg/model0.pt", fix="")
    _, sb = load_checkpoint(tmp_path / "b/train/test_vgg/model0.pt", fix="")
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    again = train(tmp_path / "a", cfg)  # finished: skipped, same document
    assert again["config_hash"] == resumed["config_hash"] and again["seconds"] == resumed["seconds"]


@pytest.fixture(scope="module")
def finetuned(trained_run, tmp_path_factory):
    run = tmp_path_factory.mktemp("ft") / "run"
    shutil.copytree(trained_run, run)
    with make_executor(1) as ex:
        res = finetune(run, FinetuneConfig(**FT), ex)
    return run, res


def test_finetune_raises_on_chip_accuracy(finetuned):
    _, res = finetuned
    assert len(res) == 2 and (res.offset_lsb_rms > 1).all()  # SAR W/L 4: offsets of several LSB
    assert res.acc_chip_after.mean() > res.acc_chip_before.mean() + 0.05
    assert (res.acc_software > res.acc_chip_before).all()


def test_model1_differs_from_model0_and_from_the_chip(finetuned):
    run, _ = finetuned
    table = OffsetTable(run / "chips/offsets.parquet")
    m0, _ = load_model(run / "train/tiny/model0.pt", fix="")
    chip, header = load_model(run / "finetune/tiny/sar_wl4/chip_0.pt", fix="", kind="chip",
                              cim=lambda h: design_cim(h, table, "sar"))
    s0, s1 = m0.state_dict(), chip.state_dict()
    assert any(not torch.equal(s0[k], s1[k]) for k in s0 if k.endswith("weight"))
    from nn import load_chip
    from pipeline.datasets import load_data

    x = load_data("fashion-mnist", 10, 300).x_test
    load_chip(chip, table, "sar", 4.0, 0)
    on_chip = predict(chip, x)
    set_digital(chip, True)
    model1 = predict(chip, x)
    assert (on_chip != model1).any()
    assert header["result"]["acc_model1_digital"] == pytest.approx(
        float((model1 == load_data("fashion-mnist", 10, 300).y_test).float().mean()))


def test_finetune_resume_redoes_nothing_finished_and_is_deterministic(finetuned, tmp_path):
    run, res = finetuned
    design = run / "finetune/tiny/sar_wl4"
    mtime0 = (design / "chip_0.pt").stat().st_mtime_ns
    (design / "chip_1.pt").unlink()  # the chip "in flight" when the run was killed
    with make_executor(1) as ex:
        again = finetune(run, FinetuneConfig(**FT), ex)
    assert (design / "chip_0.pt").stat().st_mtime_ns == mtime0
    pd.testing.assert_frame_equal(again.drop(columns="seconds"), res.drop(columns="seconds"))
    cross, _ = read_table(design / "cross_chip.parquet", CROSS, fix="")
    assert set(cross.weights_chip) == {0, 1} and len(cross) == 4
    saved, _ = read_table(design / "results.parquet", RESULTS, fix="")
    assert list(saved.chip_id) == [0, 1]


def test_warm_start_begins_from_the_source_and_follows_its_changes(trained_run, tiny_train, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    kw = {**tiny_train, "subset": 200, "epochs": 1, "chip_train": True}
    warm = train(run, train_config(**kw, init_from="tiny"), tag="warm")
    fresh = train(run, train_config(**kw), tag="fresh")
    h_warm, _ = read_table(run / "train/warm/history.parquet", HISTORY, fix="")
    h_fresh, _ = read_table(run / "train/fresh/history.parquet", HISTORY, fix="")
    source = read_json(run / "train/tiny/metrics.json", fix="")
    # before any step the warm model is the source's model0 (read here through the ADC), the fresh one is not
    assert list(h_warm.epoch) == list(h_fresh.epoch) == [0, 1]
    assert h_warm.test_acc.iloc[0] > h_fresh.test_acc.iloc[0] + 0.15
    assert h_warm.test_acc.iloc[0] > source["test_acc"] - 0.15
    assert warm["config"]["init_from"] == "tiny" and "init_from" not in fresh["config"]
    # the source's hash is part of the run's: a retrained source retrains the warm run
    assert train(run, train_config(**kw, init_from="tiny"), tag="warm")["seconds"] == warm["seconds"]
    train(run, train_config(**{**tiny_train, "epochs": 1}), tag="tiny")
    again = train(run, train_config(**kw, init_from="tiny"), tag="warm")
    assert again["config_hash"] != warm["config_hash"]


def test_a_diverged_epoch_stops_training_and_keeps_the_last_finite_one(tmp_path, tiny_train, monkeypatch):
    import dataclasses

    import pipeline.train as train_mod
    from pipeline.config import TrainingDiverged

    real = train_mod.train_steps
    calls = []

    def nan_in_second_epoch(*a, **k):
        stats = real(*a, **k)
        calls.append(1)
        return [dataclasses.replace(st, loss=float("nan")) for st in stats] if len(calls) == 2 else stats

    monkeypatch.setattr(train_mod, "train_steps", nan_in_second_epoch)
    with pytest.raises(TrainingDiverged, match="epoch 2.*state.pt keeps epoch 1"):
        train(tmp_path, train_config(**{**tiny_train, "subset": 200, "epochs": 3}))
    header, _ = load_checkpoint(tmp_path / "train/test_vgg/state.pt", fix="")
    assert header["epoch"] == 1 and not (tmp_path / "train/test_vgg/model0.pt").exists()


def test_bn_recal_reestimates_only_the_batchnorm_statistics(tmp_path, tiny_train):
    kw = {**tiny_train, "subset": 200, "epochs": 1, "chip_train": True}
    plain = train(tmp_path / "a", train_config(**kw))
    recal = train(tmp_path / "b", train_config(**kw, bn_recal_batches=2))
    assert "bn_recal_batches" not in plain["config"] and recal["config"]["bn_recal_batches"] == 2
    assert plain["config_hash"] != recal["config_hash"]
    _, sa = load_checkpoint(tmp_path / "a/train/test_vgg/model0.pt", fix="")
    _, sb = load_checkpoint(tmp_path / "b/train/test_vgg/model0.pt", fix="")
    stats = [k for k in sa if k.endswith(("running_mean", "running_var"))]
    assert stats and all(torch.equal(sa[k], sb[k]) for k in sa if k not in stats and "num_batches" not in k)
    assert not all(torch.equal(sa[k], sb[k]) for k in stats)  # the weights are the same; their statistics are not
    with pytest.raises(ConfigError, match="bn_recal_batches"):
        train_config(**kw, bn_recal_batches=-1)


@pytest.mark.parametrize("field, quant_field, value", [("psq_ste_window", "psum_ste_window", 8.0),
                                                       ("psq_ste_smooth", "psum_ste_smooth", 2.0)])
def test_psq_estimators_reach_the_chip_and_change_only_the_gradient(tmp_path, tiny_train, field, quant_field, value):
    kw = {**tiny_train, "subset": 200, "epochs": 1, "psq": "1bit"}
    plain = train(tmp_path / "a", train_config(**kw))
    other = train(tmp_path / "b", train_config(**kw, **{field: value}))
    assert field not in plain["config"] and other["config"][field] == value
    ha, sa = load_checkpoint(tmp_path / "a/train/test_vgg/model0.pt", fix="")
    hb, sb = load_checkpoint(tmp_path / "b/train/test_vgg/model0.pt", fix="")
    assert hb["cim"]["quant"][quant_field] == value and ha["cim"]["quant"][quant_field] == 0.0
    weights = [k for k in sa if k.endswith("weight")]
    assert not all(torch.equal(sa[k], sb[k]) for k in weights)  # another gradient, other weights
    with pytest.raises(ConfigError, match="give it with psq"):
        train_config(**{**kw, "psq": None}, **{field: value})
    with pytest.raises(ConfigError, match="give one"):
        train_config(**kw, psq_ste_window=8.0, psq_ste_smooth=2.0)


@pytest.mark.parametrize("init_from, tag, words", [("nothing", "warm", "train it first"),
                                                   ("tiny", "tiny", "names the run itself"),
                                                   ("../tiny", "warm", "train tag of the same run folder")])
def test_warm_start_refuses_a_missing_or_wrong_source(trained_run, tiny_train, init_from, tag, words):
    with pytest.raises(ConfigError, match=words):
        train(trained_run, train_config(**{**tiny_train, "epochs": 1}, init_from=init_from), tag=tag)


def test_warm_start_refuses_another_model(trained_run, tiny_train, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    with pytest.raises(ConfigError, match="same model"):
        train(run, train_config(**{**tiny_train, "model": "test_resnet", "epochs": 1}, init_from="tiny"), tag="other")


def test_a_later_call_for_other_chips_keeps_the_earlier_chips_in_the_tables(finetuned):
    run, res = finetuned
    design = run / "finetune/tiny/sar_wl4"
    mtimes = {p.name: p.stat().st_mtime_ns for p in design.glob("chip_*.pt")}
    with make_executor(1) as ex:
        only_1 = finetune(run, FinetuneConfig(**{**FT, "chips": (1,)}), ex)  # chip 0 came from an earlier call
    assert list(only_1.chip_id) == [0, 1]
    assert {p.name: p.stat().st_mtime_ns for p in design.glob("chip_*.pt")} == mtimes  # nothing redone
    saved, _ = read_table(design / "results.parquet", RESULTS, fix="")
    pd.testing.assert_frame_equal(saved.drop(columns="seconds"), res.drop(columns="seconds"))
    from pipeline.finetune import _earlier_chips
    from pipeline.paths import RunPaths

    paths, same = RunPaths(run), FinetuneConfig(**FT)
    other = FinetuneConfig(**{**FT, "iters": 31})  # other settings: no finished chip is this configuration's
    train_hash = load_checkpoint(run / "train/tiny/model0.pt", fix="", kind="model0")[0]["config_hash"]
    offsets_hash = config_hash(OffsetTable(run / "chips/offsets.parquet").meta.get("config_hash", ""))
    assert set(_earlier_chips(paths, same, same.chip_hash(train_hash, offsets_hash), set())) == {0, 1}
    assert _earlier_chips(paths, other, other.chip_hash(train_hash, offsets_hash), set()) == {}
