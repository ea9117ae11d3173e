"""Evaluation: shard-independence, AutoAttack equal to pyautoattack, FMN distances that are real."""

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
from pyautoattack import AutoAttack

from apgrid.trainables.attacks import AUTOATTACK_ENSEMBLES, autoattack, fmn, lp_norm
from apgrid.trainables.evaluation import (
    EvalSettings,
    ThreatModel,
    attack_bytes_per_sample,
    auto_batch_size,
    block_ranges,
    evaluate_samples,
    fit_batch_size,
    memory_budget,
    shard_ranges,
)
from apgrid.trainables.models import build_model

THREAT = ThreatModel("Linf", 0.1)
SETTINGS = EvalSettings(pgd_steps=5, fmn_steps=60, block_size=10, seed=3)
N = 30


def test_shard_ranges_cover_every_sample_once():
    for n, block, shards in [(360, 60, 6), (361, 60, 4), (30, 10, 3), (7, 10, 3)]:
        ranges = shard_ranges(n, block, shards)
        covered = [i for s, e in ranges for i in range(s, e)]
        assert covered == list(range(n))
        assert all(s % block == 0 for s, _ in ranges)  # shards hold whole blocks
    assert block_ranges(25, 47, 10) == [(25, 30), (30, 40), (40, 47)]


@pytest.mark.slow  # a full evaluation (AutoAttack, FMN, HO-FMN columns): `make test`, not `make check`
def test_one_shard_equals_three_shards_row_for_row(trained, digits):
    x, y = digits.x_test[:N], digits.y_test[:N]
    whole = evaluate_samples(trained, x, y, 0, THREAT, SETTINGS, signed_fmn=True)
    parts = [
        evaluate_samples(trained, x[s:e], y[s:e], s, THREAT, SETTINGS, signed_fmn=True)
        for s, e in shard_ranges(N, SETTINGS.block_size, 3)
    ]
    sharded = pd.concat(parts, ignore_index=True)
    assert len(shard_ranges(N, SETTINGS.block_size, 3)) == 3
    pd.testing.assert_frame_equal(whole, sharded)
    assert list(whole["sample_idx"]) == list(range(N))
    # the attacks did real work: AA never above PGD, PGD never above clean
    assert (whole["aa_correct"] <= whole["clean_correct"]).all()
    assert whole["pgd_correct"].sum() <= whole["clean_correct"].sum()
    assert whole["aa_correct"].sum() < whole["clean_correct"].sum()


def test_autoattack_matches_pyautoattack_called_directly(trained, digits):
    x, y = digits.x_test[:N], digits.y_test[:N]
    robust, broken_by, x_adv = autoattack(trained, x, y, eps=0.1, norm="Linf", version="standard", seed=7)
    direct = AutoAttack(trained, eps=0.1, norm="Linf", version="standard", seed=7)
    direct_adv, direct_pred = direct.run_standard_evaluation(x, y, batch_size=500)
    assert torch.equal(robust, direct_pred == y)
    assert torch.equal(x_adv, direct_adv)
    assert (~robust).sum() > 0
    clean_wrong = trained(x).argmax(1) != y
    for i in range(N):  # broken_by names an attack exactly for samples correct clean, then lost
        lost = bool(not robust[i] and not clean_wrong[i])
        assert (broken_by[i] is not None) == lost
        assert broken_by[i] in (None, "apgd-ce", "apgd-t", "fab-t", "square")
    # the ensemble's first two attacks alone break exactly the samples they broke in the full run
    quick, quick_by, _ = autoattack(
        trained, x, y, eps=0.1, norm="Linf", version="standard", seed=7, attacks=("apgd-t", "apgd-ce")
    )
    assert {"apgd-ce", "apgd-t"} & set(broken_by)  # the comparison below is not vacuous
    assert quick_by == [b if b in ("apgd-ce", "apgd-t") else None for b in broken_by]
    assert torch.equal(quick, robust | torch.tensor([b in ("fab-t", "square") for b in broken_by]))


def test_autoattack_ensembles_are_pyautoattacks():
    model = build_model("digits-cnn", 1, 10, [0.5], [0.25])
    for version, ensemble in AUTOATTACK_ENSEMBLES.items():
        for norm in ("Linf", "L2"):
            library = AutoAttack(model, eps=0.1, norm=norm, version=version, seed=0)
            assert tuple(library.attacks_to_run) == ensemble, (version, norm)


def test_fmn_point_flips_the_prediction_and_its_norm_is_the_distance(trained, digits):
    x, y = digits.x_test[:N], digits.y_test[:N]
    correct = trained(x).argmax(1) == y
    x, y = x[correct], y[correct]
    dist, found, x_adv = fmn(trained, x, y, norm="Linf", steps=100, step_size=1.0)
    assert found.float().mean() > 0.9
    with torch.no_grad():
        pred = trained(x_adv).argmax(1)
    assert torch.all(pred[found] != y[found])
    assert torch.allclose(dist[found], lp_norm(x_adv - x, "Linf")[found])
    assert torch.all(dist[found] > 0) and torch.all(dist[~found].isnan())
    assert x_adv.min() >= 0 and x_adv.max() <= 1


def test_signed_fmn_is_negative_where_the_model_is_wrong(trained, digits):
    x, y = digits.x_test[:120], digits.y_test[:120]
    quick = EvalSettings(
        pgd_steps=1,
        fmn_steps=60,
        block_size=120,  # FMN is what is tested here
        autoattack_attacks=("apgd-ce",),
    )
    rows = evaluate_samples(trained, x, y, 0, THREAT, quick, signed_fmn=True)
    right, wrong = rows[rows.clean_correct], rows[~rows.clean_correct & rows.fmn_found]
    assert len(wrong) > 0
    assert (right.loc[right.fmn_found, "fmn_eps"] > 0).all()
    assert (wrong["fmn_eps"] < 0).all()
    unsigned = evaluate_samples(trained, x, y, 0, THREAT, quick, signed_fmn=False)
    assert (unsigned.loc[~unsigned.clean_correct, "fmn_eps"] == 0).all()


def test_fit_batch_size_takes_the_whole_block_or_the_fewest_equal_batches_that_fit():
    assert fit_batch_size(250, bytes_per_sample=10, budget_bytes=10_000) == 250
    for fits in (249, 200, 125, 124, 77, 1):
        batch = fit_batch_size(250, bytes_per_sample=10, budget_bytes=10 * fits)
        pieces = -(-250 // batch)
        assert batch <= fits  # within the budget ...
        assert pieces == -(-250 // fits)  # ... in the fewest calls the budget allows
    with pytest.raises(MemoryError, match="evaluation.batch_size"):
        fit_batch_size(250, bytes_per_sample=100, budget_bytes=99)


def test_attack_memory_estimate_covers_what_autograd_keeps_per_sample():
    tiny = build_model("cifar-tiny", 3, 10, [0.5] * 3, [0.25] * 3).eval()
    for arch in ("resnet18", "vgg16"):
        model = build_model(arch, 3, 10, [0.5] * 3, [0.25] * 3).eval()
        estimate = attack_bytes_per_sample(model, (3, 32, 32))
        kept = saved_for_backward_per_sample(model, (3, 32, 32))
        inputs = 16 * 4 * 3 * 32 * 32  # the attack's copies of the input
        assert kept <= estimate <= 2 * kept + inputs, arch
        assert estimate > 10 * attack_bytes_per_sample(tiny, (3, 32, 32))  # ~ layers x width
    resnet = build_model("resnet18", 3, 10, [0.5] * 3, [0.25] * 3).eval()
    ratio = attack_bytes_per_sample(resnet, (3, 64, 64)) / attack_bytes_per_sample(resnet, (3, 32, 32))
    assert 3.5 < ratio < 4.5  # activations grow with the pixels


def saved_for_backward_per_sample(model, shape, batch=8) -> float:
    """Bytes of the per-sample tensors autograd saves in a forward pass (weights excluded)."""
    saved = {}

    def pack(t):
        if t.dim() and t.shape[0] == batch:
            saved[(t.data_ptr(), tuple(t.shape))] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(torch.rand(batch, *shape, requires_grad=True))
    return sum(saved.values()) / batch


def test_auto_batch_on_cpu_is_the_whole_block_for_a_small_model(trained):
    assert auto_batch_size(trained, (1, 8, 8), 250, torch.device("cpu")) == 250


def test_auto_batch_on_a_gpu_share_splits_the_block_only_when_the_share_is_small(monkeypatch):
    """The CUDA branch with no GPU here: an 80 GB card reported by a stand-in. A whole card or a
    quarter of it holds a ResNet-50 block of 250 (~31 MB a sample); a tenth does not."""
    import types

    card = types.SimpleNamespace(total_memory=80 * 2**30)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: card)
    resnet50 = build_model("resnet50", 3, 10, [0.5] * 3, [0.25] * 3).eval()
    gpu = torch.device("cuda", 0)
    assert memory_budget(gpu, 0.25) == 10 * 2**30
    assert auto_batch_size(resnet50, (3, 32, 32), 250, gpu, share=1.0) == 250
    assert auto_batch_size(resnet50, (3, 32, 32), 250, gpu, share=0.25) == 250
    assert auto_batch_size(resnet50, (3, 32, 32), 250, gpu, share=0.1) == 125


def test_batch_size_changes_no_pgd_clean_or_fmn_result(trained, digits):
    """Clean, PGD (its start is per sample) and FMN are per-sample computations, so a block split
    into batches gives their rows; only AutoAttack, re-seeded per batch, may differ."""
    x, y = digits.x_test[:N], digits.y_test[:N]
    one = dataclasses.replace(SETTINGS, block_size=N, batch_size="auto", autoattack_samples=1)
    split = dataclasses.replace(one, batch_size=7)
    whole = evaluate_samples(trained, x, y, 0, THREAT, one, signed_fmn=True)
    parts = evaluate_samples(trained, x, y, 0, THREAT, split, signed_fmn=True)
    for column in ("clean_pred", "pgd_correct", "fmn_found"):
        assert whole[column].tolist() == parts[column].tolist(), column
    for column in ("logit_margin", "fmn_eps"):
        pd.testing.assert_series_equal(whole[column], parts[column], rtol=1e-5, atol=1e-6)


def test_fmn_bounds_never_exceed_what_an_attack_proved():
    from apgrid.trainables.evaluation import fmn_bounds

    correct = np.array([True, True, True, True, False])
    pgd = np.array([True, False, False, True, False])
    aa = np.array([True, True, True, False, True])
    eps = np.array([0.3, 0.2, 0.05, np.nan, -0.1])
    overstated, bounded = fmn_bounds(correct, pgd, aa, eps, 0.1)
    assert overstated.tolist() == [False, True, False, True, False]
    np.testing.assert_allclose(bounded, [0.3, 0.1, 0.05, 0.1, -0.1])


@pytest.mark.slow  # a full evaluation (AutoAttack, FMN, HO-FMN columns): `make test`, not `make check`
def test_evaluated_rows_carry_the_bound_and_both_readings_of_a_negative_eps(trained, digits):
    x, y = digits.x_test[:N], digits.y_test[:N]
    rows = evaluate_samples(trained, x, y, 0, THREAT, SETTINGS, True, "cpu")
    broken = rows["clean_correct"] & (~rows["pgd_correct"] | rows["aa_correct"].eq(False))
    assert (rows.loc[broken, "fmn_eps_bounded"] <= THREAT.eps + 1e-6).all()
    flagged = rows["fmn_overstated"]
    assert (rows.loc[flagged, "fmn_eps_bounded"] == np.float32(THREAT.eps)).all()
    right = rows["clean_correct"]
    np.testing.assert_array_equal(rows.loc[right, "fmn_eps_untargeted"], rows.loc[right, "fmn_eps"])
    wrong = rows[~right & rows["fmn_eps_untargeted"].notna()]
    assert len(wrong) and (wrong["fmn_eps_untargeted"] < 0).all()
    # leaving the predicted class is never farther than reaching one given class (the true one)
    both = wrong[wrong["fmn_eps"].notna()]
    assert (both["fmn_eps_untargeted"].abs() <= both["fmn_eps"].abs() + 0.05).mean() > 0.8


# -- HO-FMN --------------------------------------------------------------------------------------


def test_dlr_loss_is_the_papers_shift_and_scale_invariant_margin():
    """Croce & Hein 2020, eq. 5: -(z_y - max_{j != y} z_j) / (z_pi1 - z_pi3); invariant to a shift
    and a positive rescaling of the logits, negative while the sample is classified correctly."""
    from apgrid.trainables.attacks import DLRLoss

    z = torch.tensor([[3.0, 1.0, 0.0, -1.0], [0.5, 2.0, 1.0, 0.0]])
    y = torch.tensor([0, 0])
    loss = DLRLoss()(z, y)
    torch.testing.assert_close(loss, torch.tensor([-(3 - 1) / (3 - 0), -(0.5 - 2) / (2 - 0.5)]))
    torch.testing.assert_close(DLRLoss()(7 * z - 4, y), loss)
    assert loss[0] < 0 < loss[1]  # correct, then misclassified


def test_ho_fmn_steps_along_the_gradients_sign_the_unit_of_its_lr_range():
    """HO-FMN's lr range [8/255, 10] is for its FMN's sign step (pralab/HO-FMN src/attacks/fmn.py),
    a move of lr on every feature, where secml-torch's own FMN moves lr in L2: one step of the
    configured attack changes the perturbation by lr in L-infinity (for either norm), plain FMN's
    by lr in L2."""
    from secmlt.adv.evasion.fmn import FMN
    from secmlt.models.pytorch.base_pytorch_nn import BasePyTorchClassifier
    from secmlt.trackers.trackers import Tracker
    from torch.utils.data import DataLoader, TensorDataset

    from apgrid.trainables.attacks import FMNConfig, _configure
    from apgrid.trainables.hofmn import HOFMN_ATTACKS, SEARCH_SPACE, decode

    class Deltas(Tracker):
        def __init__(self):
            super().__init__("deltas")
            self.seen = []

        def track(self, iteration, loss, scores, x_adv, delta, grad):
            self.seen.append(delta.clone())

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)).eval()
    x = torch.rand(5, 1, 8, 8) * 0.5 + 0.25  # inside [0, 1] after a step: nothing clipped
    y = model(x).argmax(1)
    lr = 0.01
    for norm, config in [("linf", None), ("linf", FMNConfig(lr=lr)), ("l2", FMNConfig(lr=lr))]:
        deltas = Deltas()
        attack = FMN(perturbation_model=norm, num_steps=3, step_size=lr, backend="native", trackers=[deltas])
        if config is not None:
            _configure(attack, config, 3)
        list(attack(BasePyTorchClassifier(model), DataLoader(TensorDataset(x, y), batch_size=5)))
        first_step = deltas.seen[1].flatten(1)
        size = first_step.abs().amax(1) if config else first_step.norm(dim=1)
        torch.testing.assert_close(size, torch.full((5,), lr), msg=f"{norm} {config}")
    for attack in HOFMN_ATTACKS:  # the corners of every search space are the authors' bounds
        low, high = decode(attack, torch.zeros(4)), decode(attack, torch.ones(4))
        assert (low.lr, high.lr) == pytest.approx((8 / 255, 10)) and high.weight_decay == pytest.approx(1)
    assert set(SEARCH_SPACE["sgd"]) == {"lr", "momentum", "weight_decay", "dampening"}
    assert len(HOFMN_ATTACKS) == 3 * 3 * 2


def test_bayesian_optimisation_is_seeded_and_beats_its_sobol_start():
    """The search of one attack: Ax's Sobol start (2 x 4 parameters = 8 points), then points of
    most expected improvement under the GP, which on a smooth bowl come closer to its minimum
    than the Sobol points did; the same seed gives the same points, another seed others."""
    from apgrid.trainables.hofmn import bayes_opt, initial_trials

    centre = torch.tensor([0.3, 0.7, 0.2, 0.6], dtype=torch.float64)

    def bowl(point):
        return float(((point - centre) ** 2).sum())

    points, values = bayes_opt(bowl, 4, 20, seed=5)
    again, _ = bayes_opt(bowl, 4, 20, seed=5)
    other, _ = bayes_opt(bowl, 4, 20, seed=6)
    assert initial_trials(4) == 8 and len(points) == len(values) == 20
    assert all(torch.equal(a, b) for a, b in zip(points, again))
    assert not torch.equal(points[0], other[0])
    sobol = torch.quasirandom.SobolEngine(4, scramble=True, seed=5).draw(8, dtype=torch.float64)
    assert torch.equal(torch.stack(points[:8]), sobol)
    assert min(values[8:]) < min(values[:8]) / 2


def hofmn_median(distance, found, correct) -> float:
    """HOFMN._evaluate's objective recomputed apart: the lower median of the tuning batch, a
    sample misclassified already or left unbroken at infinity."""
    far = sorted(float(d) if ok and right else np.inf for d, ok, right in zip(distance, found, correct))
    return far[(len(far) - 1) // 2]


def test_ho_fmn_picks_the_best_trial_of_its_searches_by_their_objective(trained, digits):
    """Every trial's median recomputed from its own FMN run on the tuning samples: the trials
    recorded are what the attacks scored, and the pick is the best of all of them."""
    from apgrid.trainables.hofmn import tune_hofmn

    x, y = digits.x_test[:16], digits.y_test[:16]
    attacks = ("logit-sgd-calr", "dlr-adam-none")
    pick, searches = tune_hofmn(trained, x, y, norm="Linf", steps=20, trials=9, attacks=attacks, seed=1)
    assert [s.attack for s in searches] == list(attacks) and all(len(s.trials) == 9 for s in searches)
    correct = (trained(x).argmax(1) == y).tolist()
    scores = {}
    for search in searches:
        for trial in search.trials:
            assert trial.config.attack == search.attack
            distance, found, _ = fmn(trained, x, y, norm="Linf", steps=20, step_size=1.0, config=trial.config)
            scores[trial.config] = hofmn_median(distance.tolist(), found.tolist(), correct)
            assert trial.median == pytest.approx(scores[trial.config], abs=1e-6)
    assert scores[pick] == min(scores.values())
    assert len(set(scores.values())) > 2  # the trials differ: the pick is a choice
    again, _ = tune_hofmn(trained, x, y, norm="Linf", steps=20, trials=9, attacks=attacks, seed=1)
    assert again == pick


def test_ho_fmn_reports_its_own_distances_and_the_ensemble_beside_them(trained, digits):
    """fmn_eps_ho is the tuned attack's own distance, found by nothing else (here a weak one:
    the smallest step of the range, no schedule, so it ends above plain FMN on some samples and
    below on none it should not be); fmn_eps_ensemble is the per-sample minimum of the two, and
    the tables read each under its own name."""
    from apgrid.analysis.tables import summarize
    from apgrid.trainables.attacks import FMNConfig

    x, y = digits.x_test[:30], digits.y_test[:30]
    weak = FMNConfig(loss="ce", optimizer="sgd", scheduler="none", lr=8 / 255)
    # FMN is what is tested: AutoAttack's first attack on one sample only
    quick = dataclasses.replace(
        SETTINGS, block_size=30, autoattack_attacks=("apgd-ce",), autoattack_samples=1
    )
    rows = evaluate_samples(trained, x, y, 0, THREAT, quick, False, fmn_config=weak)
    right = rows["clean_correct"].to_numpy(dtype=bool, copy=True)
    own, _, _ = fmn(
        trained, x[right], y[right], norm="Linf", steps=SETTINGS.fmn_steps, step_size=1.0, config=weak
    )
    np.testing.assert_allclose(rows.loc[right, "fmn_eps_ho"], own.numpy(), rtol=1e-5)
    ho, plain = rows["fmn_eps_ho"].to_numpy(), rows["fmn_eps"].to_numpy()
    assert (ho[right] > plain[right] + 1e-3).any()  # not forced below FMN
    np.testing.assert_allclose(rows["fmn_eps_ensemble"], np.fmin(ho, plain), rtol=1e-6)
    assert rows["fmn_ho_config"].iloc[0] == weak.describe()
    metrics = summarize(rows, THREAT.eps)
    n = len(rows)
    assert metrics["fmn_ho_acc_at_eps"] == pytest.approx(
        (right & (np.nan_to_num(ho, nan=np.inf) > 0.1)).sum() / n
    )
    assert metrics["fmn_ensemble_acc_at_eps"] <= min(metrics["fmn_ho_acc_at_eps"], metrics["fmn_acc_at_eps"])
    assert metrics["fmn_ho_farther_than_fmn"] > 0
    untuned = evaluate_samples(trained, x[:10], y[:10], 0, THREAT, quick, False)
    assert untuned[["fmn_eps_ho", "fmn_eps_ensemble", "fmn_ho_config"]].isna().all().all()
    # rows written before the ensemble had its column: their fmn_eps_ho was the ensemble
    old = rows.drop(columns="fmn_eps_ensemble").assign(fmn_eps_ho=rows["fmn_eps_ensemble"])
    old_metrics = summarize(old, THREAT.eps)
    assert "fmn_ho_acc_at_eps" not in old_metrics
    assert old_metrics["fmn_ensemble_acc_at_eps"] == metrics["fmn_ensemble_acc_at_eps"]


def test_tuned_evaluation_runs_the_pick_of_the_search(trained, digits):
    """evaluate's HO-FMN is tune_hofmn's pick on the first fmn_tuning_samples, with the spec's
    tuning steps and attacks, the same on every call."""
    from apgrid.trainables.evaluation import tune_model_fmn
    from apgrid.trainables.hofmn import tune_hofmn

    x, y = digits.x_test[:40], digits.y_test[:40]
    settings = dataclasses.replace(
        SETTINGS,
        fmn_tuning_trials=6,
        fmn_tuning_samples=12,
        fmn_tuning_steps=15,
        fmn_tuning_attacks=("ce-adamax-calr",),
    )
    config = tune_model_fmn(trained, x, y, THREAT, settings)
    expected, _ = tune_hofmn(
        trained, x[:12], y[:12], norm="Linf", steps=15, trials=6, attacks=("ce-adamax-calr",), seed=3
    )
    assert config == expected and config.attack == "ce-adamax-calr"
    assert tune_model_fmn(trained, x, y, THREAT, dataclasses.replace(settings, fmn_tuning_trials=0)) is None


# -- apgrid.evaluate: the grid's evaluation of any module ----------------------------------------

QUICK = dict(num_samples=12, block_size=10, pgd_steps=3, fmn_steps=10, autoattack_attacks=["apgd-ce"])


def test_apgrid_evaluate_gives_the_grids_rows_for_any_module_and_leaves_it_as_it_was(trained, digits):
    import apgrid
    from apgrid.grid.store import SAMPLE_SCHEMA

    trained.train()  # the caller's mode and device come back
    rows = apgrid.evaluate(trained, "digits", "Linf:0.1", device="cpu", name="mine", **QUICK)
    assert trained.training
    trained.eval()
    assert list(rows.columns) == ["grid", "model_id", *SAMPLE_SCHEMA.names]
    assert list(rows["sample_idx"]) == list(range(12)) and set(rows["model_id"]) == {"mine"}
    with torch.inference_mode():
        predicted = trained(digits.x_test[:12]).argmax(1)
    assert (rows["clean_pred"].to_numpy() == predicted.numpy()).all()
    assert rows["eps"].iloc[0] == 0.1 and rows["autoattack_attacks"].iloc[0] == "apgd-ce"
    assert rows["aa_correct"].notna().all() and rows["role"].iloc[0] == "dense"
    assert (rows["pgd_correct"] <= rows["clean_correct"]).all()  # PGD counts only the correct


@pytest.mark.parametrize(
    "given, message",
    [
        (dict(dataset="mnist"), "dataset.name: unknown 'mnist'; allowed: cifar10, cifar100, digits, svhn"),
        (dict(threat_model="Linf"), "threat_model: 'Linf' is not NORM:EPS, like Linf:8/255"),
        (dict(threat_model="Linf:lots"), "threat_model.eps: 'lots' is not a number or a fraction like 8/255"),
        (dict(threat_model={"norm": "L3", "eps": 0.1}), "threat_model.norm: unknown 'L3'; allowed: L2, Linf"),
        (dict(pgd_steps=0), "evaluation.pgd_steps: 0 is below the minimum 1"),
        (dict(colour="red"), "evaluation.colour: unknown field; allowed: num_samples"),
        (dict(num_samples=1000), "num_samples: 1000 is above digits's 360 test samples"),
        (dict(device="tpu"), "device: unknown 'tpu'; allowed: auto, cpu, cuda"),
        (dict(model="a string"), "model: must be a torch.nn.Module, got str"),
        (dict(model=torch.nn.Linear(3, 10)), "model: does not take digits's 1x8x8 images"),
        (dict(model=torch.nn.Flatten()), "model: gives outputs of shape (1, 64) on one image; digits needs"),
    ],
)
def test_apgrid_evaluate_refuses_bad_input_in_one_line(trained, given, message):
    import apgrid
    from apgrid.errors import ApgridError

    given = {"model": trained, "dataset": "digits", **given}
    with pytest.raises(ApgridError) as caught:
        apgrid.evaluate(given.pop("model"), **given)
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


@pytest.mark.slow
def test_ho_fmn_is_searched_once_per_model_and_every_shard_runs_that_pick(ray_session, tmp_path):
    """One actor searches a model's HO-FMN attack (EvalWorker.tune) before its shards go, and every
    shard, on whichever actor, runs that pick: one search per model (before, each actor searched
    every model it met: up to one per actor), the pick tune_model_fmn makes in this process."""
    from apgrid.grid.api import Grid
    from apgrid.grid.runner import launch
    from apgrid.grid.spec import parse_spec
    from apgrid.grid.store import read_samples
    from apgrid.trainables.data import load_digits
    from apgrid.trainables.evaluation import tune_model_fmn
    from tests.helpers import quick_evaluation, tiny_grid

    tuning = {"fmn_tuning_trials": 2, "fmn_tuning_samples": 8, "fmn_tuning_steps": 5}
    evaluation = quick_evaluation(num_samples=40, shards=4, fmn_steps=10, **tuning)
    raw = tiny_grid(tmp_path / "out", evaluation={**evaluation, "fmn_tuning_attacks": ["ce-sgd-calr"]})
    raw["prune"]["methods"] = ["lwm-global"]
    log: list[str] = []
    launch(parse_spec(raw), log=log.append, until="evaluate")
    assert "[evaluate] HO-FMN searched 2 times for 2 models" in log
    rows, grid = read_samples(tmp_path / "out"), Grid(tmp_path / "out")
    spec = grid.spec
    ds = load_digits()
    x, y = ds.x_test[:40], ds.y_test[:40]
    for model_id, own in rows.groupby("model_id"):
        assert own["fmn_ho_config"].nunique() == 1 and len(own) == 40
        pick = tune_model_fmn(grid.load_model(model_id), x, y, spec.threat_model, spec.evaluation.settings)
        assert own["fmn_ho_config"].iloc[0] == pick.describe()
