"""Each method's authors' recipe: cited data, taken by a grid by default, every departure listed."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from apgrid.grid.cli import main
from apgrid.grid.plan import method_deviations, model_card, pruned_models
from apgrid.grid.spec import SpecError, parse_spec
from apgrid.grid.tracking import model_tags
from apgrid.trainables.methods import PRUNING_METHODS
from apgrid.trainables.recipes import PHASES, AuthorsRecipe, Cited, Fact
from apgrid.trainables.training import Recipe

SOURCE = "example/repo train.py: args"
AUTHORS = AuthorsRecipe(
    reference="an example",
    parent={"trainer": Cited("trades", SOURCE), "epochs": Cited(100, SOURCE), "beta": Cited(6.0, SOURCE)},
    search={"epochs": Cited(160, SOURCE), "lr": Cited(0.1, SOURCE), "schedule": Cited("cosine", SOURCE)},
    finetune={
        "trainer": Cited("pgd", SOURCE),
        "epochs": Cited(100, SOURCE),
        "lr": Cited(0.1, SOURCE),
        "pgd_steps": Cited(10, SOURCE),
        "step_size": Cited(2 / 255, SOURCE),
        "select": Cited("best", SOURCE),
        "attack_mode": Cited("train", SOURCE),
        "momentum": Cited(0.9, "open: not in the released code"),
    },
    method={"batch_norm": Fact(Cited("frozen", SOURCE), apgrid="trained")},
)


@pytest.fixture
def hydra_with(monkeypatch):
    """HYDRA carrying the example recipe above (the registry entry is shared: restored after)."""
    monkeypatch.setattr(type(PRUNING_METHODS["hydra"]), "recipe", AUTHORS)


def spec(**prune):
    return parse_spec(
        {
            "name": "t",
            "output": "runs/t",
            "dense": {"recipe": {"trainer": "pgd", "epochs": 2}},
            "prune": {"methods": ["hydra"], "sparsities": [0.9], **prune},
        }
    )


def test_every_recorded_recipe_is_cited_and_trainable():
    """Every value names its source, and each phase's values make a valid training Recipe."""
    recorded = {name: m.recipe for name, m in PRUNING_METHODS.items() if m.recipe is not None}
    for name, recipe in recorded.items():
        for phase in PHASES:
            for key, cited in recipe.phase(phase).items():
                assert cited.source.strip(), f"{name} {phase}.{key}: no source"
            Recipe(**recipe.recipe_values(phase))
        for key, fact in recipe.method.items():
            assert fact.authors.source.strip(), f"{name} {key}: no source"


def test_unknown_keys_are_refused():
    with pytest.raises(ValueError, match="unknown recipe keys"):
        AuthorsRecipe(reference="x", search={"epoch": Cited(1, SOURCE)})


def test_a_grid_takes_the_authors_values_where_the_spec_sets_none(hydra_with):
    s = spec()
    m = s.prune.methods[0]
    assert m.search.epochs == 160 and m.search.lr == 0.1
    assert m.finetune.epochs == 100 and m.finetune.pgd_steps == 10
    assert m.finetune.step_size == pytest.approx(2 / 255)
    assert m.dense is None  # the spec's dense.recipe sets trainer and epochs: the spec wins,
    assert m.dense_recipe(s) == s.dense.recipe  # and the authors' TRADES beta goes with TRADES
    parent = parse_spec({"name": "t", "output": "o", "prune": {"methods": ["hydra"]}}).prune.methods[0]
    assert (parent.dense.trainer, parent.dense.epochs, parent.dense.beta) == ("trades", 100, 6.0)
    assert m.finetune.select == "last"  # best needs a validation split this grid has not
    assert m.finetune.momentum == Recipe().momentum  # an open value is not taken


def test_the_spec_wins_and_every_departure_is_listed(hydra_with):
    s = spec(finetune={"epochs": 5, "trainer": "fgsm-rs"})
    m = s.prune.methods[0]
    assert m.finetune.epochs == 5 and m.finetune.trainer == "fgsm-rs"
    assert m.finetune.pgd_steps == Recipe().pgd_steps  # the authors' PGD attack is not FGSM's
    found = {(d.phase, d.key): d for d in method_deviations(s, m)}
    assert found[("finetune", "epochs")].grid == 5 and found[("finetune", "epochs")].authors == 100
    assert ("finetune", "trainer") in found and ("parent", "trainer") in found
    assert m.finetune.attack_mode == "train" and ("finetune", "attack_mode") not in found  # taken
    assert ("finetune", "momentum") not in found  # open values are never deviations
    assert ("method", "batch_norm") in found
    assert ("search", "epochs") not in found and ("search", "schedule") not in found
    assert "finetune.epochs 5 — authors 100 (example/repo train.py: args)" in {str(d) for d in found.values()}


def test_budget_scales_only_the_authors_epochs(hydra_with):
    m = spec(budget=0.05, finetune={"lr": 0.01}).prune.methods[0]
    assert (m.search.epochs, m.finetune.epochs) == (8, 5)
    assert m.finetune.lr == 0.01
    s = spec(budget=0.05, search={"epochs": 3})
    assert s.prune.methods[0].search_recipe(s).epochs == 3
    with pytest.raises(SpecError, match="prune.budget"):
        spec(budget=0)


def test_cards_and_mlflow_tags_carry_the_deviations(hydra_with):
    s = spec(finetune={"epochs": 5})
    plan = pruned_models(s)[0]
    assert any(d.startswith("finetune.epochs 5 — authors 100") for d in plan.deviations)
    card = model_card(plan, "digits", {})
    assert card["deviations"] == list(plan.deviations)
    tags = model_tags(plan, "digits", "prune")
    assert (
        tags["authors_deviations"] == str(len(plan.deviations)) and "finetune.epochs 5" in tags["deviations"]
    )
    assert dataclasses.replace(plan, deviations=()).config_hash == plan.config_hash  # ids unchanged


def test_a_method_without_a_recorded_recipe_keeps_the_grids_recipes(monkeypatch):
    monkeypatch.setattr(type(PRUNING_METHODS["hydra"]), "recipe", None)
    s = spec(finetune={"epochs": 3})
    m = s.prune.methods[0]
    assert m.finetune is None and m.search is None and m.dense is None
    assert m.finetune_recipe(s).epochs == 3 and method_deviations(s, m) == []


def test_every_method_carries_its_own_recipe():
    recipes = [m.recipe for m in PRUNING_METHODS.values()]
    assert all(r is not None for r in recipes)
    assert len({id(r) for r in recipes}) == len(recipes)  # a variant never inherits its parent's


def test_a_spec_that_sets_nothing_trains_hydra_as_its_authors():
    """HYDRA's recipe (inspire-group/hydra): TRADES in every phase, a 100-epoch parent at lr 0.1,
    20 score epochs at lr 0.1, 100 fine-tuning epochs at lr 0.01, weight decay 1e-4, batch 128."""
    s = parse_spec({"name": "t", "output": "o", "prune": {"methods": ["hydra"]}})
    m = s.prune.methods[0]
    parent, search, finetune = m.dense_recipe(s), m.search_recipe(s), m.finetune_recipe(s)
    assert {parent.trainer, search.trainer, finetune.trainer} == {"trades"}
    assert (parent.epochs, parent.lr, search.epochs, search.lr) == (100, 0.1, 20, 0.1)
    assert (finetune.epochs, finetune.lr) == (100, 0.01)
    assert {r.weight_decay for r in (parent, search, finetune)} == {1e-4}
    assert {r.batch_size for r in (parent, search, finetune)} == {128}
    # what apgrid cannot do as they did is listed, never silent: eval-mode attacks match, the
    # 0.031 ε is the threat model's
    found = {f"{d.phase}.{d.key}" for d in method_deviations(s, m)}
    assert "finetune.epochs" not in found and "parent.trainer" not in found
    assert "parent.eps" in found


def test_dry_run_and_list_print_the_recipes(hydra_with, capsys, tmp_path):
    spec_file = tmp_path / "s.yaml"
    spec_file.write_text(
        "name: t\noutput: runs/t\ndense: {recipe: {epochs: 2}}\n"
        "prune: {methods: [hydra], sparsities: [0.9], finetune: {epochs: 5}}\n"
    )
    assert main(["launch", str(spec_file), "--dry-run", "--output", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "hydra: " in out and "finetune.epochs 5 — authors 100" in out
    assert main(["list", "methods", "hydra"]) == 0
    out = capsys.readouterr().out
    assert "epochs" in out and SOURCE in out and "[apgrid: trained]" in out
    assert main(["list", "methods", "no-such"]) == 2
    assert main(["list", "architectures", "x"]) == 2


def test_the_docs_methods_table_is_the_registrys():
    """docs/design.md's table is generated (`apgrid list methods --markdown`): no second source."""
    from pathlib import Path

    from apgrid.trainables.methods import methods_table

    text = (Path(__file__).resolve().parents[1] / "docs" / "design.md").read_text()
    table = text.split("<!-- methods-table:")[1].split("-->", 1)[1].split("<!-- /methods-table -->")[0]
    assert table.strip() == methods_table()
    assert all(f"`{name}`" in table for name in PRUNING_METHODS)


def test_the_authors_step_epochs_follow_a_shorter_schedule():
    """MAD fine-tunes 60 epochs at lr 0.1 with steps at 30 and 45 (main_mad_pretrain.py): a grid
    that gives it 6 epochs, or a budget of 0.1, steps at the same shares of its 6."""
    for prune in ({"finetune": {"epochs": 6}}, {"budget": 0.1}):
        s = parse_spec({"name": "t", "output": "o", "prune": {"methods": ["mad"], **prune}})
        finetune = s.prune.methods[0].finetune_recipe(s)
        assert (finetune.epochs, finetune.lr, finetune.schedule) == (6, 0.1, "step")
        assert finetune.milestones == (3, 4)


TRAINING_EXAMPLES = sorted(
    p.name
    for p in (Path(__file__).parents[1] / "grid" / "examples").glob("*.yaml")
    if p.name != "published.yaml"
)  # published.yaml trains nothing


@pytest.mark.parametrize("example", TRAINING_EXAMPLES)
def test_the_example_grids_explain_every_deviation(example, tmp_path):
    """Each deviation of every example grid from the methods' authors carries the
    spec's reason (`because:`); taking one reason out leaves exactly that deviation unexplained.
    Reasons are outside the grid's identity: fingerprint and model ids stay."""
    import yaml

    from apgrid.grid.plan import all_models, unexplained_deviations
    from apgrid.grid.spec import DEFAULT_SPEC

    raw = yaml.safe_load((DEFAULT_SPEC.parent / example).read_text())
    raw["dataset"]["root"] = str(tmp_path)
    spec = parse_spec(raw)
    assert unexplained_deviations(spec) == []
    if example == "thin-ice.yaml":
        hydra = next(m for m in raw["prune"]["methods"] if isinstance(m, dict) and m["name"] == "hydra")
        del hydra["because"]["*.eps"]
        missing = ["hydra: parent.eps", "hydra: search.eps", "hydra: finetune.eps"]
    else:
        key = next(iter(raw["prune"]["because"]))
        del raw["prune"]["because"][key]
        missing = None
    bare = parse_spec(raw)
    found = unexplained_deviations(bare)
    assert found and (missing is None or found == missing)
    assert bare.fingerprint() == spec.fingerprint()
    assert [p.model_id for p in all_models(bare)] == [p.model_id for p in all_models(spec)]


def test_the_dry_run_prints_each_reason_and_launch_warns_on_the_unexplained(hydra_with):
    from apgrid.grid.plan import describe_deviations
    from apgrid.grid.runner import _warn_unexplained

    bare = spec(finetune={"epochs": 7})
    assert "UNEXPLAINED finetune.epochs 7" in describe_deviations(bare)
    lines = []
    _warn_unexplained(bare, lines.append)
    assert len(lines) == 1 and "without a reason" in lines[0]
    explained = spec(finetune={"epochs": 7}, because={"finetune.epochs": "a shorter budget", "*": "a test"})
    text = describe_deviations(explained)
    assert "finetune.epochs 7 — authors 100" in text and "because a shorter budget" in text
    assert ", 0 unexplained" in text and "UNEXPLAINED" not in text
    lines.clear()
    _warn_unexplained(explained, lines.append)
    assert lines == []


def test_a_shared_parent_is_one_model_every_method_prunes_and_its_departures_are_listed(hydra_with):
    """dense.shared: HYDRA prunes dense.recipe's model, not its authors' TRADES parent, and the
    departure is listed; the survey grids, which compare the pruning alone, plan one parent."""
    import yaml

    from apgrid.grid.plan import dense_models
    from apgrid.grid.spec import DEFAULT_SPEC

    dense = {"recipe": {"epochs": 2}}
    methods = {"methods": ["hydra", "lwm-global"], "sparsities": [0.9]}
    own = parse_spec({"name": "t", "output": "o", "dense": dense, "prune": methods})
    assert len(dense_models(own)) == 2 and own.prune.methods[0].dense_recipe(own).trainer == "trades"
    raw = {"name": "t", "output": "o", "dense": {**dense, "shared": True}}
    shared = parse_spec({**raw, "prune": methods})
    (parent,) = dense_models(shared)
    assert parent.config["recipe"]["trainer"] == shared.dense.recipe.trainer != "trades"
    assert {p.dense_model_id for p in pruned_models(shared)} == {parent.model_id}
    found = {f"{d.phase}.{d.key}": d for d in method_deviations(shared, shared.prune.methods[0])}
    assert (found["parent.trainer"].grid, found["parent.trainer"].authors) == (
        parent.config["recipe"]["trainer"],
        "trades",
    )
    with pytest.raises(SpecError, match="prune.methods.hydra.dense: with dense.shared"):
        parse_spec({**raw, "prune": {"methods": [{"name": "hydra", "dense": {"epochs": 3}}]}})
    for example in ("survey.yaml", "survey-svhn.yaml", "survey-cifar-tiny.yaml"):
        grid = yaml.safe_load((DEFAULT_SPEC.parent / example).read_text())
        grid["dataset"]["root"] = "."
        grid = parse_spec(grid)
        assert len(dense_models(grid)) == len(grid.dense.architectures) * len(grid.dense.seeds), example


# the issue-33 review of each method against its authors' code (the values, not the recipe files)
AUTHORS_VALUES = {
    "rst": {"search": {"epochs": 160, "lr": 0.1}},
    "mad": {
        "finetune": {"trainer": "mart", "epochs": 60, "lr": 0.1, "milestones": (30, 45), "weight_decay": 2e-4}
    },
    "flyingbird": {"search": {"epochs": 200, "milestones": (100, 150), "select": "best"}},
    "pwoa": {"parent": {"trainer": "trades"}},
    "harp": {"parent": {"trainer": "trades"}, "finetune": {"epochs": 100}},
    "r-admm": {
        "search": {"lr": 0.01},
        "finetune": {"epochs": 200, "milestones": (80, 150), "select": "best"},
    },
    "li20": {"parent": {"trainer": "fgsm"}},
    "atmc": {"parent": {"trainer": "pgd+clean/2"}, "search": {"trainer": "pgd+clean/2"}},
}


@pytest.mark.parametrize("method", sorted(AUTHORS_VALUES))
def test_a_spec_that_sets_nothing_trains_each_method_on_its_authors_values(method):
    s = parse_spec(
        {
            "name": "t",
            "output": "o",
            "dataset": {"name": "digits", "validation": 100},
            "prune": {"methods": [method]},
        }
    )
    m = s.prune.methods[0]
    recipes = {"parent": m.dense_recipe(s), "search": m.search_recipe(s), "finetune": m.finetune_recipe(s)}
    for phase, values in AUTHORS_VALUES[method].items():
        for key, value in values.items():
            assert getattr(recipes[phase], key) == value, f"{method} {phase}.{key}"


def test_the_example_grids_schedule_the_admm_dual_and_ho_fmn_as_they_say():
    """R-ADMM's Z/U update acts 10 times in each grid's ADMM phase (the reference: every 20 of 200
    epochs), survey.yaml runs HO-FMN as its authors (32 trials, 64 samples, 100 steps), and
    thin-ice.yaml holds 1,000 training images out to select on."""
    import yaml

    from apgrid.grid.spec import DEFAULT_SPEC

    def load(example):
        raw = yaml.safe_load((DEFAULT_SPEC.parent / example).read_text())
        raw["dataset"]["root"] = "."
        return parse_spec(raw)

    for example in ("survey.yaml", "survey-svhn.yaml", "thin-ice.yaml"):
        spec = load(example)
        admm = next(m for m in spec.prune.methods if m.name == "r-admm")
        assert admm.search_recipe(spec).epochs == 10 * admm.options["admm_epoch"], example
    settings = load("survey.yaml").evaluation.settings
    assert (settings.fmn_tuning_trials, settings.fmn_tuning_samples, settings.fmn_tuning_steps) == (
        32,
        64,
        100,
    )
    assert load("thin-ice.yaml").dataset.validation == 1000
