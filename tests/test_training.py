"""Training as the references train: augmentation seeded by (seed, epoch, batch), a validation split
for model selection (never the test set), catastrophic overfitting flagged, exact resume."""

import copy
import dataclasses
import io

import pytest
import torch

from apgrid.grid.spec import SpecError, parse_spec
from apgrid.trainables.data import Dataset, with_validation
from apgrid.trainables.models import build_model
from apgrid.trainables.pipeline import DenseJob, Selection
from apgrid.trainables.training import Recipe, augment_batch

GOOD = {"name": "t", "output": "out"}


def tiny_cifar(n=256, seed=0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return Dataset("cifar10", x, y, x[:64], y[:64], 10, (0.5,) * 3, (0.25,) * 3)


def test_crop_is_a_window_of_the_zero_padded_image_and_flip_mirrors_it():
    x = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).view(2, 3, 32, 32)
    out = augment_batch(x, "crop", torch.Generator().manual_seed(1))
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(2):
        hits = [
            (a, b)
            for a in range(9)
            for b in range(9)
            if torch.equal(padded[i, :, a : a + 32, b : b + 32], out[i])
        ]
        assert len(hits) == 1
    flips = torch.stack([augment_batch(x, "crop-flip", torch.Generator().manual_seed(s)) for s in range(40)])
    mirrored = sum(
        int(
            any(
                torch.equal(padded[0, :, a : a + 32, b : b + 32].flip(-1), f[0])
                for a in range(9)
                for b in range(9)
            )
        )
        for f in flips
    )
    assert 8 < mirrored < 32  # about half of them, per sample
    assert torch.equal(augment_batch(x, "none", torch.Generator()), x)


def test_augmentation_is_fixed_by_seed_epoch_and_batch():
    x = torch.rand(8, 3, 32, 32)
    a = augment_batch(x, "crop-flip", torch.Generator().manual_seed(5))
    b = augment_batch(x, "crop-flip", torch.Generator().manual_seed(5))
    c = augment_batch(x, "crop-flip", torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_each_dataset_trains_with_its_references_augmentation(tmp_path):
    def augment(name):
        return parse_spec(
            {
                **GOOD,
                "dataset": {"name": name, "root": str(tmp_path)},
                "dense": {"architectures": ["cifar-tiny"]},
            }
        )

    assert augment("cifar10").dense.recipe.augment == "crop-flip"
    assert augment("cifar100").prune.finetune.augment == "crop-flip"
    assert augment("svhn").prune.search.augment == "crop"
    assert parse_spec(GOOD).dense.recipe.augment == "none"  # digits
    own = parse_spec({**GOOD, "dense": {"recipe": {"augment": "crop"}}})
    assert own.dense.recipe.augment == "crop"


def test_validation_split_is_fixed_disjoint_and_out_of_the_training_set():
    ds = tiny_cifar()
    a, b = with_validation(ds, 40), with_validation(ds, 40)
    assert torch.equal(a.x_val, b.x_val) and len(a.y_train) == 216 and len(a.y_val) == 40
    rows = {tuple(r[:3, 0, 0].tolist()) for r in a.x_train}
    assert not any(tuple(r[:3, 0, 0].tolist()) in rows for r in a.x_val)


def dense_job(ds, recipe, **callbacks):
    torch.manual_seed(0)
    model = build_model("cifar-tiny", 3, 10, ds.mean, ds.std)
    return DenseJob(recipe, 8 / 255, "Linf", 0, model, ds, "cpu", **callbacks)


def test_dense_job_resumed_from_any_epoch_trains_exactly_as_uninterrupted():
    ds = with_validation(tiny_cifar(), 32)
    recipe = Recipe(trainer="fgsm-rs", epochs=3, lr=0.05, batch_size=64, augment="crop-flip", select="best")
    states = []

    def keep(metrics, state):
        buffer = io.BytesIO()
        torch.save(state, buffer)
        states.append(buffer.getvalue())

    whole = dense_job(ds, recipe, report=keep)
    whole.run()
    for cut in (1, 2):
        resumed = dense_job(ds, recipe)
        resumed.run(torch.load(io.BytesIO(states[cut - 1]), weights_only=True))
        for (name, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values()):
            assert torch.equal(a, b), (cut, name)


def test_select_best_keeps_the_best_validation_epoch():
    ds = with_validation(tiny_cifar(), 32)
    reports, saved = [], {}
    recipe = Recipe(trainer="fgsm-rs", epochs=4, lr=0.2, batch_size=64, select="best")

    def finish(model, metrics, extra):
        saved.update(extra, weights=copy.deepcopy(model.state_dict()))

    job = dense_job(ds, recipe, report=lambda m, s: reports.append((m, s)), on_finish=finish)
    job.run()
    scores = [m["val_pgd_acc"] for m, _ in reports]
    best = max(range(4), key=lambda i: (scores[i], -i))  # the first of equal scores
    assert saved["selected_epoch"] == best + 1 and saved["select"] == "best"
    kept = reports[best][1]["selection"]["best_weights"]
    for key, value in saved["weights"].items():
        assert torch.equal(value, kept[key]), key
    assert "test_clean_acc" not in reports[0][0]  # the test set is not looked at while training


def test_a_collapse_of_validation_pgd_accuracy_is_catastrophic_overfitting():
    selection, model = Selection(), torch.nn.Linear(2, 2)
    flags = [
        selection.update(epoch, score, model, keep=False)
        for epoch, score in enumerate([0.30, 0.45, 0.40, 0.05, 0.02], start=1)
    ]
    assert flags == [False, False, False, True, False] and selection.overfit_epoch == 4
    assert selection.best_epoch == 2


@pytest.mark.parametrize(
    "patch, field",
    [
        (
            {"threat_model": {"norm": "L2", "eps": 0.5}, "dense": {"recipe": {"trainer": "fgsm-rs"}}},
            "dense.recipe.trainer",
        ),
        ({"dense": {"recipe": {"select": "best"}}}, "dense.recipe.select"),
        ({"dense": {"recipe": {"augment": "mixup"}}}, "dense.recipe.augment"),
        ({"dataset": {"validation": -1}}, "dataset.validation"),
    ],
)
def test_recipes_the_references_do_not_define_are_refused(patch, field):
    with pytest.raises(SpecError) as err:
        parse_spec({**GOOD, **patch})
    assert str(err.value).startswith(field + ":")


def test_each_method_prunes_its_papers_parent_and_equal_recipes_share_one():
    from apgrid.grid.plan import dense_models, pruned_models

    spec = parse_spec(
        {
            **GOOD,
            "prune": {
                "sparsities": [0.9],
                "methods": [
                    "lwm-global",
                    {"name": "hydra", "dense": {"trainer": "trades"}},
                    {"name": "lamp", "dense": {"trainer": "pgd"}},
                ],
            },
        }
    )
    dense = dense_models(spec)
    assert sorted(p.config["recipe"]["trainer"] for p in dense) == ["pgd", "trades"]
    parents = {p.method: p.dense_model_id for p in pruned_models(spec)}
    trades = next(p.model_id for p in dense if p.config["recipe"]["trainer"] == "trades")
    assert parents["hydra"] == trades
    assert parents["lwm-global"] == parents["lamp"] != trades  # pgd is dense.recipe's trainer


def test_li20_trains_its_ticket_on_the_parents_recipe_unless_the_spec_says_otherwise():
    """Li et al. 2020 (survey taxonomy Li20): the ticket is found by FGSM training, and the rewound
    ticket is trained with PGD-AT on the dense network's schedule, not on the (shorter) grid
    fine-tuning recipe; a value the spec sets for fine-tuning still wins. Other methods keep the
    grid's fine-tuning recipe."""
    dense = {"recipe": {"epochs": 30, "lr": 0.1, "weight_decay": 2e-4}}
    spec = parse_spec({**GOOD, "dense": dense, "prune": {"methods": ["li20", "lwm-global"]}})
    li20, lwm = spec.prune.methods
    assert li20.dense.trainer == "fgsm" and li20.finetune.trainer == "pgd"
    assert dataclasses.replace(li20.finetune, trainer="fgsm") == li20.dense
    assert lwm.finetune is None and spec.prune.finetune.epochs == 5  # the grid's, as before
    spec = parse_spec(
        {**GOOD, "dense": dense, "prune": {"finetune": {"epochs": 3}, "methods": [{"name": "li20"}]}}
    )
    (li20,) = spec.prune.methods
    assert (li20.finetune.epochs, li20.finetune.lr, li20.finetune.weight_decay) == (3, 0.1, 2e-4)


def test_a_step_schedule_decays_tenfold_at_each_milestone():
    """MAD fine-tunes 60 epochs at lr 0.1, x0.1 at epochs 30 and 45 (torch's MultiStepLR)."""
    from apgrid.trainables.training import lr_at

    recipe = Recipe(epochs=60, lr=0.1, schedule="step", milestones=(30, 45))
    rates = [lr_at(recipe, e) for e in range(60)]
    assert rates[:30] == [0.1] * 30
    assert rates[30:45] == pytest.approx([0.01] * 15) and rates[45:] == pytest.approx([0.001] * 15)
    assert lr_at(Recipe(lr=0.1, schedule="constant"), 9) == 0.1
    assert lr_at(Recipe(epochs=10, lr=0.1), 5) == pytest.approx(0.05)  # cosine, as before


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_the_training_attack_runs_in_the_mode_the_recipe_names(mode):
    """R-ADMM, ATMC, RST and Flying Bird craft their training attack inside model.train() (batch
    norm on the batch's statistics); most others in eval mode. Every batch-norm call of one epoch
    is recorded: in eval mode the attack's steps run with training off, in train mode none does."""
    from apgrid.trainables.training import train_epoch

    ds = tiny_cifar(64)
    torch.manual_seed(0)
    model = build_model("cifar-small", 3, 10, ds.mean, ds.std)
    calls = []
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    bn.register_forward_pre_hook(lambda module, args: calls.append(module.training))
    recipe = Recipe(epochs=1, batch_size=32, pgd_steps=3, attack_mode=mode)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    train_epoch(
        model,
        optimizer,
        ds.x_train,
        ds.y_train,
        recipe=recipe,
        eps=8 / 255,
        norm="Linf",
        seed=0,
        epoch=0,
        device=torch.device("cpu"),
    )
    attack_calls = 2 * 3  # two batches, three PGD steps each
    assert calls.count(False) == (attack_calls if mode == "eval" else 0)
    assert calls.count(True) == 2 + (attack_calls if mode == "train" else 0)


def tiny_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4))


def tiny_batch():
    gen = torch.Generator().manual_seed(1)
    return torch.rand(8, 3, 2, 2, generator=gen), torch.randint(0, 4, (8,), generator=gen)


def test_mart_loss_is_its_papers_formula_computed_by_hand():
    """MART (Wang et al. 2020, Eq. 6; MAD's kfac_MAD_pruner.py loss_function): BCE(p(x'), y) =
    -log p_y(x') - log(1 - max_{k != y} p_k(x')), plus beta KL(p(x) || p(x')) (1 - p_y(x)), per sample,
    written out sample by sample here; a cross-entropy (pgd's loss) fails this."""
    from apgrid.trainables.training import per_sample_loss

    model, (x, y) = tiny_net(), tiny_batch()
    x_adv = (x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(2))).clamp(0, 1)
    losses, _ = per_sample_loss(model, x, x_adv, y, Recipe(trainer="mart", beta=0.5))
    losses = losses.detach()
    with torch.no_grad():
        p, q = model(x).softmax(1), model(x_adv).softmax(1)
    for i in range(len(y)):
        others = [q[i, k] for k in range(4) if k != y[i]]
        bce = -torch.log(q[i, y[i]]) - torch.log(1 - max(others))
        kl = sum(p[i, k] * torch.log(p[i, k] / q[i, k]) for k in range(4))
        expected = bce + 0.5 * kl * (1 - p[i, y[i]])
        assert float(losses[i]) == pytest.approx(float(expected), rel=1e-3)


def test_pgd_plus_clean_half_is_the_mean_of_the_clean_and_adversarial_cross_entropies():
    """ATMC (VITA-Group/ATMC util_trts.py): 0.5 CE(x) + 0.5 CE(x_adv), its PGD starting at x."""
    import torch.nn.functional as F

    from apgrid.trainables.training import adversarial_examples, per_sample_loss

    model, (x, y) = tiny_net(), tiny_batch()
    recipe = Recipe(trainer="pgd+clean/2", pgd_steps=3)
    x_adv = adversarial_examples(model, x, y, recipe, 0.1, "Linf")
    losses, _ = per_sample_loss(model, x, x_adv, y, recipe)
    with torch.no_grad():
        clean = F.cross_entropy(model(x), y, reduction="none")
        adv = F.cross_entropy(model(x_adv), y, reduction="none")
    assert torch.allclose(losses, (clean + adv) / 2)
    assert (adv > clean).all()  # an attack, not the clean batch
    again = adversarial_examples(model, x, y, recipe, 0.1, "Linf")
    assert torch.equal(x_adv, again)  # no random start


def test_fgsm_is_one_signed_gradient_step_of_eps_without_a_random_start():
    """FGSM (Goodfellow et al. 2015): x' = clip(x + eps sign(grad_x CE(f(x), y))), deterministic
    (FGSM-RS starts from uniform noise and steps 1.25 eps)."""
    import torch.nn.functional as F

    from apgrid.trainables.training import adversarial_examples

    model, (x, y) = tiny_net(), tiny_batch()
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(xg), y), xg)
    expected = (x + 0.1 * grad.sign()).clamp(0, 1)
    out = adversarial_examples(model, x, y, Recipe(trainer="fgsm"), 0.1, "Linf")
    assert torch.allclose(out, expected)


def test_the_old_trainers_give_the_same_examples_and_losses_as_before():
    """pgd, trades, fgsm-rs, clean: the values pinned from the code before mart, fgsm and
    pgd+clean/2 were added (bit for bit)."""
    from apgrid.trainables.training import adversarial_examples, per_sample_loss

    model, (x, y) = tiny_net(), tiny_batch()
    sums = {}
    for trainer in ("pgd", "trades", "fgsm-rs", "clean"):
        torch.manual_seed(3)
        recipe = Recipe(trainer=trainer, pgd_steps=3)
        x_adv = adversarial_examples(model, x, y, recipe, 0.1, "Linf")
        losses, _ = per_sample_loss(model, x, x_adv, y, recipe)
        sums[trainer] = (float(x_adv.double().sum()), float(losses.detach().double().sum()))
    for trainer, pinned in PINNED_TRAINERS.items():
        assert sums[trainer] == pytest.approx(pinned, rel=1e-12), trainer


# adversarial_examples and per_sample_loss at 02c0f95 (before mart, fgsm and pgd+clean/2)
PINNED_TRAINERS = {
    "pgd": (48.515867091715336, 12.795677781105042),
    "trades": (49.56764395534992, 11.702379941940308),
    "fgsm-rs": (48.17180175334215, 12.602549314498901),
    "clean": (48.65699064731598, 11.403399229049683),
}


@pytest.mark.parametrize("trainer", ["fgsm", "fgsm-rs"])
def test_fgsm_trainers_are_refused_under_l2(trainer):
    with pytest.raises(SpecError) as err:
        parse_spec(
            {**GOOD, "threat_model": {"norm": "L2", "eps": 0.5}, "dense": {"recipe": {"trainer": trainer}}}
        )
    assert str(err.value).startswith("dense.recipe.trainer: " + trainer)
