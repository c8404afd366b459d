"""tools/peers.py (and tools/peers_lamda.py) without USB or LAMDA-SSL: the split, the budget
arithmetic, the shims, the exits, the table rows. The tests that need `.peers-venv` are skipped
where it is missing."""

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from noisy_student.data import load_source, make_splits

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("peers", ROOT / "tools" / "peers.py")
peers = importlib.util.module_from_spec(_spec)
sys.modules["peers"] = peers  # dataclasses look their module up
_spec.loader.exec_module(peers)
sys.path.insert(0, str(ROOT / "tools"))
import peers_lamda  # noqa: E402  (it imports `peers`: the module above)

NEEDS_VENV = pytest.mark.skipif(not (peers.VENV / "bin" / "python").exists(),
                                reason="needs .peers-venv (python tools/peers.py setup)")


def test_split_is_the_recipe_split_and_hashes_its_indices():
    cfg, splits = peers.recipe_splits("digits", 0)
    ours = make_splits(load_source(cfg.data), cfg.data, 0)  # what the recipe's run writes
    for name in ("labeled", "unlabeled", "test"):
        assert splits.record[name] == ours.record[name]
        np.testing.assert_array_equal(getattr(splits, name).images, getattr(ours, name).images)
    assert len(splits.labeled) == 100 and len(splits.test) == 539
    record = peers.split_record(splits)
    assert record["labeled"]["sha256"] == peers.index_sha256(ours.record["labeled"])
    assert record["unlabeled"]["count"] == len(ours.record["unlabeled"])
    _, other = peers.recipe_splits("digits", 1)
    assert peers.split_record(other)["labeled"]["sha256"] != record["labeled"]["sha256"]
    pool = set(splits.record["unlabeled"])
    assert not pool & set(splits.record["labeled"])


def test_index_hash_is_sha256_of_compact_json():
    import hashlib

    assert peers.index_sha256([3, 1, 2]) == hashlib.sha256(b"[3,1,2]").hexdigest()
    assert peers.index_sha256(np.array([3, 1, 2])) == peers.index_sha256([3, 1, 2])


def test_iteration_budget_on_hand_computed_numbers():
    # 120 s less 5% = 114; less 20 s spent and 10 s of evaluation = 84 s; at 0.5 s a step: 168
    assert peers.iteration_budget(120, 20, 0.5, 10) == 168
    assert peers.iteration_budget(120, 20, 0.7, 10) == 120  # 84 / 0.7 = 120.000...
    assert peers.iteration_budget(3300, 60, 2.5, 30, margin=0.0) == 1284  # 3210 / 2.5
    assert peers.iteration_budget(60, 70, 0.5, 0) == 0  # over budget already
    with pytest.raises(ValueError):
        peers.iteration_budget(60, 0, 0.0, 0)


def test_epoch_plan_cuts_whole_epochs_of_about_two_minutes():
    assert peers.epoch_plan(168, 0.5) == (1, 168)  # 84 s: one epoch
    assert peers.epoch_plan(1000, 0.5) == (4, 240)  # 240 steps = 120 s; 960 of 1000 kept
    assert peers.epoch_plan(1284, 2.5) == (26, 48)
    assert peers.epoch_plan(5, 100.0) == (5, 1)  # slow steps: a checkpoint after each


def test_measured_plan_from_a_warm_ups_timings(tmp_path):
    spec = peers.RunSpec("digits", "fixmatch", 100, 10.0, tmp_path)
    stamps = [3.0, 3.5, 4.0, 4.5]  # 0.5 s a step
    # evaluation: 1 s for 100 probe images -> 2 x 5 s for 500 scored (EMA and trained) = 10 s;
    # 600 s less 5% = 570, less 20 s spent and 10 s = 540 s: 1080 steps, 4 epochs of 240 kept
    plan = peers.measured_plan(spec, stamps, 1.0, 100, 500, setup_s=12.0, warmup_s=8.0)
    assert (plan.num_train_iter, plan.epochs, plan.iters_per_epoch) == (960, 4, 240)
    assert (plan.sec_per_iter, plan.eval_estimate_s, plan.warmup_iters) == (0.5, 10.0, 4)
    assert plan.spec == {"dataset": "digits", "method": "fixmatch", "seed": 100,
                         "minutes": 10.0}
    lamda = peers.measured_plan(spec, stamps, 1.0, 100, 500, 12.0, 8.0, checkpoints=False)
    assert (lamda.num_train_iter, lamda.epochs, lamda.iters_per_epoch) == (1080, 1, 1080)
    with pytest.raises(peers.UsageError, match="no training step fits"):
        peers.measured_plan(peers.RunSpec("digits", "fixmatch", 100, 0.5, tmp_path), stamps,
                            1.0, 100, 500, 12.0, 8.0)  # 28.5 s less 30 s


def test_ema_momentum_keeps_usbs_value_on_long_runs_and_shortens_it_on_short_ones():
    assert peers.ema_momentum(1_048_576) == 0.999  # USB's published run
    assert peers.ema_momentum(10_000) == pytest.approx(0.999)  # horizon 1,000 = a tenth
    assert peers.ema_momentum(1300) == pytest.approx(1 - 10 / 1300)  # horizon 130 steps
    assert peers.ema_momentum(5) == 0.0  # no averaging at all


def test_cpu_shims_neutralise_cuda_and_restore_it():
    event, sync, tensor_cuda = torch.cuda.Event, torch.cuda.synchronize, torch.Tensor.cuda
    with peers.cpu_shims() as shims:
        x, layer = torch.zeros(3), torch.nn.Linear(2, 2)
        assert x.cuda(0) is x and layer.cuda() is layer
        assert torch.cuda.synchronize() is None and torch.cuda.set_device(0) is None
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        end.record()
        assert 0.0 <= start.elapsed_time(end) < 1000.0 and isinstance(start, peers.CpuEvent)
        assert shims == peers.SHIMS
        if importlib.util.find_spec("torchaudio") is None:
            import torchaudio

            with pytest.raises(ImportError, match="stub of tools/peers.py"):
                torchaudio.load
    assert torch.cuda.Event is event and torch.cuda.synchronize is sync
    assert torch.Tensor.cuda is tensor_cuda
    assert "cuda" not in torch.Tensor.__dict__ and "cuda" in torch.nn.Module.__dict__
    assert not isinstance(sys.modules.get("torchaudio"), peers.StubModule)


def test_missing_venv_exits_2_with_the_setup_hint(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(peers, "VENV", tmp_path / "absent")
    code = peers.main(["run", "--dataset", "digits", "--method", "fixmatch", "--seed", "0",
                       "--minutes", "1"])
    assert code == 2
    assert "run `python tools/peers.py setup` first" in capsys.readouterr().err


def test_bad_arguments_exit_2():
    for argv in (["run", "--dataset", "cifar", "--method", "fixmatch", "--seed", "0",
                  "--minutes", "1"], ["run", "--dataset", "digits", "--method", "mixmatch",
                                      "--seed", "0", "--minutes", "1"]):
        with pytest.raises(SystemExit) as e:
            peers.main(argv)
        assert e.value.code == 2
    with pytest.raises(peers.UsageError, match="mixmatch"):
        peers.hyperparameters("mixmatch")


def _result(method, seed, top1, minutes, dataset="fashion_mnist", val=None):
    return {"method": method, "framework": "USB (semilearn)", "framework_version": "0.3.2",
            "dataset": dataset, "seed": seed, "test_top1": top1, "validation_top1": val,
            "minutes": {"total": minutes}}


def test_peers_rows_mean_and_sample_sd():
    rows = peers.peers_rows([_result("fixmatch", 101, 0.84, 14.0, val=0.80),
                             _result("pseudolabel", 100, 0.70, 50.0),
                             _result("fixmatch", 100, 0.80, 10.0, val=0.78)],
                            ours={"fashion_mnist": {100: {"top1": 0.83, "minutes": 40.0},
                                                    101: {"top1": 0.83, "minutes": 56.0}}})
    assert [r["method"] for r in rows] == ["fixmatch", "pseudolabel"]
    fix, pl = rows
    assert fix["seeds"] == [100, 101] and fix["test_top1"]["n"] == 2
    assert fix["test_top1"]["mean"] == pytest.approx(0.82)
    assert fix["test_top1"]["std"] == pytest.approx(math.sqrt(2 * 0.02 ** 2))  # 0.028284
    assert fix["minutes"]["mean"] == pytest.approx(12.0)
    assert fix["minutes"]["std"] == pytest.approx(math.sqrt(8.0))
    assert fix["validation_top1"]["mean"] == pytest.approx(0.79)
    assert fix["minutes_ratio"] == pytest.approx(12.0 / 48.0)  # ours on the same seeds
    assert fix["vs_ours"]["mean"] == pytest.approx(-0.01)  # -0.03 and +0.01, seed by seed
    assert fix["vs_ours"]["std"] == pytest.approx(math.sqrt(2 * 0.02 ** 2))
    assert pl["test_top1"] == {"mean": 0.70, "std": 0.0, "n": 1}
    assert pl["minutes_ratio"] == pytest.approx(50.0 / 40.0)
    lone = peers.peers_rows([_result("fixmatch", 102, 0.9, 1.0)], ours={"fashion_mnist": {}})
    assert "vs_ours" not in lone[0] and "minutes_ratio" not in lone[0]  # no run of ours to pair
    assert pl["validation_top1"] is None
    with pytest.raises(ValueError, match="lacks"):
        peers.peers_rows([{"method": "fixmatch"}])


def test_peers_rows_weights_chosen_on_validation_run_by_run():
    ema_wins = dict(_result("flexmatch", 100, 0.86, 30.0, val=0.875),
                    validation_top1_raw=0.870, test_top1_raw=0.90)  # test would favour raw
    raw_wins = dict(_result("flexmatch", 101, 0.85, 30.0, val=0.860),
                    validation_top1_raw=0.865, test_top1_raw=0.87)
    tie = dict(_result("flexmatch", 102, 0.84, 30.0, val=0.850),
               validation_top1_raw=0.850, test_top1_raw=0.88)  # a tie keeps the EMA weights
    ours = {"fashion_mnist": {s: {"top1": 0.88, "minutes": 30.0} for s in (100, 101, 102)}}
    row, = peers.peers_rows([ema_wins, raw_wins, tie], ours=ours)
    assert row["chosen_top1"]["mean"] == pytest.approx((0.86 + 0.87 + 0.84) / 3)
    assert row["test_top1"]["mean"] == pytest.approx((0.86 + 0.85 + 0.84) / 3)  # headline: EMA
    assert row["vs_ours_chosen"]["mean"] == pytest.approx((-0.02 - 0.01 - 0.04) / 3)
    assert row["vs_ours_chosen"]["std"] == pytest.approx(0.015275, abs=1e-6)
    no_raw = peers.peers_rows([ema_wins, _result("flexmatch", 101, 0.85, 30.0, val=0.86)],
                              ours=ours)[0]
    assert "chosen_top1" not in no_raw and "vs_ours_chosen" not in no_raw  # one run lacks it


def test_table_rejects_a_file_that_is_not_a_result(tmp_path, capsys):
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps(_result("fixmatch", 0, 0.9, 2.0, dataset="digits")))
    bad.write_text(json.dumps({"accuracy": 1}))
    assert peers.main(["table", str(good), str(bad)]) == 2
    assert "bad.json: not a peer result" in capsys.readouterr().err
    assert peers.main(["table", str(good)]) == 0
    assert "| digits | fixmatch | USB (semilearn) 0.3.2 | 0 | 90.00 | - | 2.00 |" in \
        capsys.readouterr().out


def test_resume_refuses_another_runs_folder(tmp_path):
    spec = peers.RunSpec("digits", "fixmatch", 0, 2.0, tmp_path)
    plan = peers.Plan(10, 1, 10, 0.1, 1.0, 1.0, 2.0, 12, peers.spec_record(spec))
    peers._write_json(tmp_path / "plan.json", peers.dataclasses.asdict(plan))
    assert peers.load_plan(spec) == (plan, 0.0)  # a plan, no checkpoint: train from the start
    other = peers.RunSpec("digits", "meanteacher", 0, 2.0, tmp_path)
    with pytest.raises(peers.UsageError, match="choose another --out"):
        peers.load_plan(other)
    (tmp_path / "plan.json").write_text("{not json")
    with pytest.raises(peers.UsageError, match="unreadable plan.json"):
        peers.load_plan(spec)


def test_a_finished_run_is_kept_and_another_runs_result_refused(tmp_path):
    spec = peers.RunSpec("digits", "fixmatch", 0, 2.0, tmp_path)
    result = {**_result("fixmatch", 0, 0.5, 1.9, dataset="digits"), "budget_minutes": 2.0}
    peers._write_json(tmp_path / "result.json", result)
    assert peers.run(spec) == result  # nothing imported, nothing trained
    longer = peers.RunSpec("digits", "fixmatch", 0, 55.0, tmp_path)
    with pytest.raises(peers.UsageError, match="choose another --out"):
        peers.run(longer)
    lamda = {**result, "framework": "LAMDA-SSL"}  # made by --method lamda-fixmatch
    peers._write_json(tmp_path / "result.json", lamda)
    assert peers_lamda.run(peers.RunSpec("digits", "lamda-fixmatch", 0, 2.0, tmp_path)) == lamda
    with pytest.raises(peers.UsageError, match="choose another --out"):
        peers.run(spec)  # USB's fixmatch is another run


def test_the_network_is_the_recipes_last_rung_without_model_noise():
    from noisy_student.models import count_params

    cfg, splits = peers.recipe_splits("digits", 0)
    assert cfg.model.drop_rate > 0  # the recipe's student noise, which peers do not get
    plain = peers.plain_config(cfg)
    assert plain.model.drop_rate == 0.0 and plain.model.drop_path_rate == 0.0
    assert plain.model_for(plain.rounds) == "cnn_small"
    net = peers.net_builder(cfg, splits)(num_classes=10)
    out = net(torch.zeros(4, 1, 8, 8))
    assert out["logits"].shape == (4, 10) and out["feat"].shape == (4, net.net.num_features)
    assert count_params(net) == count_params(net.net)
    with pytest.raises(ValueError, match="classes"):
        peers.net_builder(cfg, splits)(num_classes=3)


@NEEDS_VENV
def test_peers_venv_imports_usb_and_lamda_under_the_shims():
    out = subprocess.run([str(peers.VENV / "bin" / "python"), str(ROOT / "tools" / "peers.py"),
                          "versions"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "torch 2.14.1" in out.stdout and "semilearn 0.3.2" in out.stdout
    assert "LAMDA-SSL 1.0.2" in out.stdout


def test_lamda_shims_patch_scikit_learn_and_restore_it():
    import sklearn.base
    import sklearn.utils
    import sklearn.utils.extmath

    before = sklearn.utils.__dict__.get("_approximate_mode")
    estimator_type = sklearn.base.ClassifierMixin.__dict__.get("_estimator_type")
    with peers_lamda.lamda_shims() as shims:
        assert sklearn.utils._approximate_mode is sklearn.utils.extmath._approximate_mode
        assert sklearn.base.ClassifierMixin._estimator_type == "classifier"
        assert shims == peers_lamda.SHIMS
    assert sklearn.utils.__dict__.get("_approximate_mode") is before
    assert sklearn.base.ClassifierMixin.__dict__.get("_estimator_type") == estimator_type


def test_a_gray_image_reaches_the_network_unchanged_through_three_channels():
    gray = np.random.default_rng(0).integers(0, 256, (2, 5, 5, 1), dtype=np.uint8)
    three = peers_lamda.rgb(gray)
    assert three.shape == (2, 5, 5, 3) and (three == gray).all()
    assert peers_lamda.rgb(three) is three  # colour images as they are
    net = torch.nn.Conv2d(1, 2, 3)
    x = torch.from_numpy(gray).permute(0, 3, 1, 2).float()
    wrapped = peers_lamda.channel_mean(net)
    assert torch.equal(wrapped(x.expand(-1, 3, -1, -1)), net(x))
    assert wrapped.net is net


LAMDA_STEPS = """
import sys, torch
sys.path.insert(0, "tools")
import peers, peers_lamda
cfg, splits = peers.recipe_splits("digits", 0)
with peers_lamda.lamda_shims():
    alg = peers_lamda.fixmatch(splits, peers.recipe_network(cfg, splits), 12, False,
                               stop_after_s=0.0)
    peers_lamda.fit(alg, splits)
    moved = any(not torch.equal(p, alg.ema.shadow[n])
                for n, p in alg._network.named_parameters())
    print(alg.it_total, len(alg.stamps), alg.ema.decay, moved,
          0 <= peers_lamda.top1(alg, splits.test) <= 1)
"""


@NEEDS_VENV
def test_lamda_fixmatch_trains_our_network_and_its_warm_up_stops_after_three_timed_steps():
    """12 planned steps, a warm-up stop after 0 s: 3 steps, each timed; the EMA (decay
    1 - 1 / (0.1 * 12)) has left the trained weights."""
    out = subprocess.run([str(peers.VENV / "bin" / "python"), "-c", LAMDA_STEPS], cwd=ROOT,
                         capture_output=True, text=True, timeout=240,
                         env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    steps, stamps, decay, moved, scored = out.stdout.split()[-5:]
    assert (steps, stamps, moved, scored) == ("3", "3", "True", "True")
    assert float(decay) == pytest.approx(1 - 1 / 1.2)
