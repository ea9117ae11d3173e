"""Spec validation: a bad field is named in one line, the exit code is 2, nothing is written."""

import re
import textwrap

import pytest

from apgrid.grid.cli import main
from apgrid.grid.spec import DEFAULT_SPEC, SpecError, load_spec, parse_spec

GOOD = {"name": "t", "output": "out"}


def test_demo_spec_is_valid():
    spec = load_spec(DEFAULT_SPEC)
    assert spec.dataset.name == "digits"
    assert len(spec.prune.methods) >= 3 and len(spec.prune.sparsities) >= 2
    assert spec.resolved_tracking_uri.startswith("sqlite:////")  # absolute


@pytest.mark.parametrize(
    "patch, field",
    [
        ({"prune": {"sparsities": [1.0]}}, "prune.sparsities"),
        ({"prune": {"sparsities": [-0.1]}}, "prune.sparsities"),
        ({"prune": {"methods": ["magic"]}}, "prune.methods"),
        ({"dense": {"architectures": ["resnet1000"]}}, "dense.architectures"),
        ({"dataset": {"name": "imagenet"}}, "dataset.name"),
        ({"threat_model": {"eps": -0.1}}, "threat_model.eps"),
        ({"threat_model": {"eps": 2}}, "threat_model.eps"),
        ({"threat_model": {"eps": "8/0x"}}, "threat_model.eps"),
        ({"evaluation": {"pgd_steps": 0}}, "evaluation.pgd_steps"),
        ({"evaluation": {"autoattack_version": "turbo"}}, "evaluation.autoattack_version"),
        ({"evaluation": {"autoattack_attacks": ["fab"]}}, "evaluation.autoattack_attacks"),
        (
            {"evaluation": {"autoattack_version": "rand", "autoattack_attacks": ["square"]}},
            "evaluation.autoattack_attacks",
        ),
        ({"evaluation": {"autoattack_attacks": []}}, "evaluation.autoattack_attacks"),
        ({"evaluation": {"batch_size": "big"}}, "evaluation.batch_size"),
        ({"evaluation": {"batch_size": 0}}, "evaluation.batch_size"),
        ({"dense": {"recipe": {"trainer": "sgd"}}}, "dense.recipe.trainer"),
        ({"colour": "blue"}, "colour"),
        ({"dataset": {"name": "cifar10"}}, "dataset.root"),
        ({"prune": {"methods": [{"name": "atmc", "bits": 1}]}}, "prune.methods.atmc.bits"),
        (
            {"prune": {"methods": [{"name": "r-admm", "sparsity_type": "rows"}]}},
            "prune.methods.r-admm.sparsity_type",
        ),
        (
            {"prune": {"methods": [{"name": "r-admm", "layer_sparsity": {"nope": 0.5}}]}},
            "prune.methods.r-admm.layer_sparsity",
        ),
        ({"prune": {"methods": [{"name": "hydra", "rho": 1}]}}, "prune.methods.hydra.rho"),
        (
            {"prune": {"methods": [{"name": "hydra", "architectures": ["vgg16"]}]}},
            "prune.methods.hydra.architectures",
        ),
        ({"prune": {"methods": ["hydra", "hydra"]}}, "prune.methods"),
        (
            {"prune": {"methods": [{"name": "filter-l1", "sparsities": [1.0]}]}},
            "prune.methods.filter-l1.sparsities",
        ),
        (
            {"prune": {"methods": [{"name": "hydra", "search": {"trainer": "trades", "beta": -1}}]}},
            "prune.methods.hydra.search.beta",
        ),
        ({"evaluation": {"num_samples": 100, "autoattack_samples": 200}}, "evaluation.autoattack_samples"),
        ({"checkpoints": [{"name": "x", "arch": "digits-cnn", "path": "/no/such.pt"}]}, "checkpoints.x.path"),
    ],
)
def test_bad_field_is_named(patch, field):
    with pytest.raises(SpecError) as err:
        parse_spec({**GOOD, **patch})
    message = str(err.value)
    assert message.startswith(field + ":"), message
    assert "\n" not in message


ONE_WORDING = [  # a spec field and a method option that fail alike say it alike
    ({"evaluation": {"fmn_steps": 0}}, "evaluation.fmn_steps: 0 is below the minimum 1"),
    (
        {"prune": {"methods": [{"name": "atmc", "bits": 1}]}},
        "prune.methods.atmc.bits: 1 is below the minimum 2; also allowed: 0",
    ),
    ({"dataset": {"download": "no"}}, "dataset.download: 'no' is not true or false"),
    (
        {"prune": {"methods": [{"name": "hydra", "freeze_bn": "no"}]}},
        "prune.methods.hydra.freeze_bn: 'no' is not true or false",
    ),
    ({"resources": {"device": "tpu"}}, "resources.device: unknown 'tpu'; allowed: auto, cpu, cuda"),
    (
        {"prune": {"methods": [{"name": "r-admm", "layers": "some"}]}},
        "prune.methods.r-admm.layers: unknown 'some'; allowed: all, conv",
    ),
    ({"threat_model": {"eps": float("inf")}}, "threat_model.eps: inf is not a finite number"),
    (
        {"prune": {"methods": [{"name": "harp", "gamma": float("nan")}]}},
        "prune.methods.harp.gamma: nan is not a finite number",
    ),
    (
        {"prune": {"methods": [{"name": "r-admm", "layer_sparsity": {"1.0": 1.0}}]}},
        "prune.methods.r-admm.layer_sparsity.1.0: 1.0 is outside [0.0, 1.0)",
    ),
    ({"prune": {"sparsities": [1.0]}}, "prune.sparsities: 1.0 is outside [0.0, 1.0)"),
    (
        {"prune": {"methods": [{"name": "hydra", "options": {"colour": 1}}]}},
        "prune.methods.hydra.colour: unknown field; allowed: freeze_bn",
    ),
]


@pytest.mark.parametrize("patch, message", ONE_WORDING)
def test_spec_fields_and_method_options_share_one_wording(patch, message):
    """trainables/fields.py checks both: one error type, one wording."""
    from apgrid.trainables.fields import FieldError

    with pytest.raises(FieldError) as err:
        parse_spec({**GOOD, **patch})
    assert isinstance(err.value, SpecError) and str(err.value) == message


def test_eps_fraction_is_exact():
    spec = parse_spec({**GOOD, "threat_model": {"eps": "8/255"}})
    assert spec.threat_model.eps == 8 / 255


def test_autoattack_attacks_keep_the_versions_order_and_all_of_them_is_the_default():
    def attacks(value, version="standard"):
        ev = {"autoattack_version": version, "autoattack_attacks": value}
        return parse_spec({**GOOD, "evaluation": ev})

    assert attacks(["square", "apgd-ce"]).evaluation.settings.autoattack_attacks == ("apgd-ce", "square")
    assert attacks("apgd-t").evaluation.settings.autoattack_ensemble == "apgd-t"
    every = attacks(["square", "fab-t", "apgd-t", "apgd-ce"])
    assert every.evaluation.settings.autoattack_attacks is None
    assert every.fingerprint() == parse_spec(GOOD).fingerprint()  # the same work, the same grid
    assert attacks(None, "rand").evaluation.settings.autoattack_ensemble == "apgd-ce,apgd-dlr"


def test_ho_fmn_settings_are_the_grids_identity_only_when_it_runs():
    """With fmn_tuning_trials 0 HO-FMN's other settings compute nothing, so they leave the grid's
    fingerprint alone; once it runs, each of them is part of what the grid computes."""

    def grid(**evaluation):
        return parse_spec({**GOOD, "evaluation": evaluation})

    base = parse_spec(GOOD).fingerprint()
    assert grid(fmn_tuning_samples=64, fmn_tuning_steps=50).fingerprint() == base
    on = grid(fmn_tuning_trials=32)
    assert on.fingerprint() != base
    assert grid(fmn_tuning_trials=32, fmn_tuning_steps=50).fingerprint() != on.fingerprint()
    assert grid(fmn_tuning_trials=32, fmn_tuning_attacks=["dlr-sgd-calr"]).fingerprint() != on.fingerprint()
    assert on.evaluation.settings.fmn_tuning_attacks is None  # all 18
    with pytest.raises(SpecError, match="fmn_tuning_attacks"):
        grid(fmn_tuning_trials=2, fmn_tuning_attacks=["dlr-sgd-rlrop"])


@pytest.mark.parametrize(
    "text, field",
    [
        ("name: t\noutput: OUT\nprune: {sparsities: [1.5]}\n", "prune.sparsities"),
        ("name: t\noutput: OUT\nprune: [unclosed\n", "spec:"),
        ("name: t\noutput: OUT\nresources: {gpus_per_trial: 1}\n", "resources.gpus_per_trial"),
    ],
)
def test_cli_bad_spec_exits_2_and_writes_nothing(tmp_path, capsys, text, field):
    out = tmp_path / "out"
    spec = tmp_path / "spec.yaml"
    spec.write_text(text.replace("OUT", str(out)))
    assert main(["launch", str(spec)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("apgrid: error: ") and field in err
    assert len(err.splitlines()) == 1
    assert not out.exists()


def test_cli_missing_dataset_root_exits_2(tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        textwrap.dedent(f"""
        name: t
        output: {tmp_path / "out"}
        dataset: {{name: cifar10, root: {tmp_path / "nowhere"}}}
        dense: {{architectures: [cifar-cnn]}}
    """)
    )
    assert main(["launch", str(spec)]) == 2
    assert "dataset.root" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_help_explains_each_command(capsys):
    for command in ("launch", "resume", "status", "query", "analyze", "list"):
        with pytest.raises(SystemExit) as exit_:
            main([command, "--help"])
        assert exit_.value.code == 0
        assert len(capsys.readouterr().out) > 200


@pytest.mark.parametrize("example", sorted(p.name for p in DEFAULT_SPEC.parent.glob("*.yaml")))
def test_example_specs_validate(example, tmp_path, monkeypatch):
    """Every shipped example is a valid spec (its data folder pointed at an existing one, its
    checkpoints written where it expects them, in their published layouts), and its checkpoints
    load as the grid would load them."""
    import yaml

    from apgrid.grid.plan import all_models
    from apgrid.grid.runner import preflight
    from tests.helpers import write_published_checkpoints

    raw = yaml.safe_load((DEFAULT_SPEC.parent / example).read_text())
    if raw.get("dataset", {}).get("root"):
        raw["dataset"]["root"] = str(tmp_path)
    write_published_checkpoints(raw, tmp_path)
    monkeypatch.chdir(tmp_path)  # checkpoint paths are relative to where `apgrid launch` runs
    raw["output"] = str(tmp_path / "out")
    spec = parse_spec(raw)
    assert len(all_models(spec)) >= 7
    preflight(spec, dry_run=True)  # every checkpoint loads (CheckpointError otherwise)


def test_the_published_example_is_hydras_zoo_with_its_reported_figures(tmp_path, monkeypatch):
    import yaml

    from apgrid.grid.plan import checkpoint_models, dense_models, pruned_models
    from tests.helpers import write_published_checkpoints

    raw = yaml.safe_load((DEFAULT_SPEC.parent / "published.yaml").read_text())
    raw["dataset"]["root"] = str(tmp_path)
    write_published_checkpoints(raw, tmp_path)
    monkeypatch.chdir(tmp_path)
    spec = parse_spec(raw)
    assert not dense_models(spec) and not pruned_models(spec)  # nothing is trained
    assert len(checkpoint_models(spec)) == 7
    by_name = {c.name: c for c in spec.checkpoints}
    assert all(c.normalization == "none" for c in spec.checkpoints)  # HYDRA: raw pixels on CIFAR
    pruned = [c for c in spec.checkpoints if c.sparsity]
    assert all(c.dense in by_name for c in pruned if c.dense)  # each pair for Table 2
    assert by_name["hydra-wrn28-10-90"].reported == {"clean": 0.8897, "robust": 0.6224, "attack": "PGD-50"}


def test_the_published_example_carries_the_thin_ice_papers_table_1(tmp_path, monkeypatch):
    """HYDRA's four pruned VGG-16 / WRN-28-4 models report the thin-ice paper's Table 1 (Rep. Acc.,
    Rep. Rob.) and are evaluated with the AutoAttack it ran (plus, Sect. 3.1) on 1,000 samples."""
    import yaml

    from tests.helpers import write_published_checkpoints

    raw = yaml.safe_load((DEFAULT_SPEC.parent / "published.yaml").read_text())
    raw["dataset"]["root"] = str(tmp_path)
    write_published_checkpoints(raw, tmp_path)
    monkeypatch.chdir(tmp_path)
    spec = parse_spec(raw)
    table_1 = {  # thin-ice-2310.08073.md Table 1, HYDRA rows: Rep. Acc. %, Rep. Rob. %
        "hydra-wrn28-4-90": (83.70, 55.20),
        "hydra-wrn28-4-95": (82.70, 54.20),
        "hydra-vgg16-90": (80.50, 49.50),
        "hydra-vgg16-95": (78.90, 48.70),
    }
    reported = {c.name: c.reported for c in spec.checkpoints}
    for name, (clean, robust) in table_1.items():
        assert reported[name]["clean"] == pytest.approx(clean / 100)
        assert reported[name]["robust"] == pytest.approx(robust / 100)
        assert "Table 1" in reported[name]["source"]
    assert spec.evaluation.autoattack_version == "plus"
    assert spec.evaluation.autoattack_samples == 1000


def test_the_thin_ice_example_carries_its_table_1_for_every_model_and_table_1_shows_both_drops(tmp_path):
    """thin-ice.yaml: each of the paper's twelve models has its Table 1 row (Rep. Acc./Rob., A.A.
    Acc./Rob.) as its method's `reported`, outside the grid's identity; the analysis gives each
    pruned model its row, and Table 1 prints the paper's drop beside apgrid's."""
    import pandas as pd
    import yaml

    from apgrid.analysis.tables import reevaluation_table
    from apgrid.grid.analyze import _reported_by_methods
    from apgrid.grid.plan import pruned_models

    raw = yaml.safe_load((DEFAULT_SPEC.parent / "thin-ice.yaml").read_text())
    raw["dataset"]["root"] = str(tmp_path)
    spec = parse_spec(raw)
    table_1 = {  # thin-ice-2310.08073.md Table 1: Rep. Acc., A.A. Acc., Rep. Rob., A.A. Rob. (%)
        ("atmc", "resnet34", 0.9): (84.83, 85.60, 43.78, 38.20),
        ("atmc", "resnet18", 0.95): (84.47, 84.60, 42.75, 35.70),
        ("r-admm", "resnet18", 0.9): (81.43, 81.30, 43.37, 44.07),
        ("r-admm", "vgg16", 0.95): (73.14, 73.20, 43.96, 38.20),
        ("hydra", "wrn-28-4", 0.9): (83.70, 84.60, 55.20, 52.80),
        ("hydra", "vgg16-hydra", 0.95): (78.90, 79.30, 48.70, 45.10),
    }
    plans = pruned_models(spec)
    found = _reported_by_methods(spec, [p.model_id for p in plans])
    assert len(found) == len(plans) == 12
    for p in plans:
        if (p.method, p.arch, p.sparsity) in table_1:
            clean, aa_clean, robust, aa_robust = table_1[(p.method, p.arch, p.sparsity)]
            figures = found[p.model_id]
            assert (figures["clean"], figures["aa_clean"]) == pytest.approx((clean / 100, aa_clean / 100))
            assert (figures["robust"], figures["aa_robust"]) == pytest.approx((robust / 100, aa_robust / 100))
    bare = {
        **raw,
        "prune": {
            **raw["prune"],
            "methods": [{k: v for k, v in m.items() if k != "reported"} for m in raw["prune"]["methods"]],
        },
    }
    assert parse_spec(bare).fingerprint() == spec.fingerprint()
    model = next(p.model_id for p in plans if (p.method, p.arch, p.sparsity) == ("r-admm", "resnet18", 0.9))
    models = pd.DataFrame(
        [
            {
                "model_id": model,
                "method": "r-admm",
                "arch": "resnet18",
                "sparsity": 0.9,
                "sparsity_measured": 0.9,
                "clean_acc": 0.8,
                "clean_acc_on_aa_samples": 0.8,
                "aa_samples": 1000,
                "num_samples": 1000,
                "pgd_acc": 0.45,
                "pgd_acc_on_aa_samples": 0.45,
                "aa_acc": 0.40,
                "fmn_acc_at_eps": 0.41,
            }
        ]
    )
    row = reevaluation_table(models, found).iloc[0]
    assert row["paper_drop"] == pytest.approx(0.4337 - 0.4407)  # the paper's -0.70
    assert pd.isna(row["drop_reported_minus_aa"])  # the paper's model is not apgrid's retraining


def test_a_methods_reported_entry_must_name_a_model_of_the_grid():
    entry = {"arch": "vgg16", "sparsity": 0.9, "clean": 0.8, "robust": 0.4}
    with pytest.raises(
        SpecError, match=r"prune.methods.hydra.reported: vgg16 at 0.9 is no model of this grid"
    ):
        parse_spec(
            {"name": "t", "output": "o", "prune": {"methods": [{"name": "hydra", "reported": [entry]}]}}
        )


def test_thin_ice_example_is_the_papers_twelve_models(tmp_path):
    import yaml

    from apgrid.grid.plan import pruned_models

    raw = yaml.safe_load((DEFAULT_SPEC.parent / "thin-ice.yaml").read_text())
    raw["dataset"]["root"] = str(tmp_path)
    pruned = pruned_models(parse_spec(raw))
    pairs = sorted((p.method, p.arch, p.sparsity) for p in pruned)
    assert len(pairs) == 12
    assert {(m, a) for m, a, _ in pairs} == {
        ("atmc", "resnet34"),
        ("atmc", "resnet18"),
        ("r-admm", "resnet18"),
        ("r-admm", "vgg16"),
        ("hydra", "wrn-28-4"),
        ("hydra", "vgg16-hydra"),
    }
    hydra = next(p for p in pruned if p.method == "hydra")
    assert hydra.config["finetune"]["trainer"] == "trades"  # the method's own recipe wins


def test_method_mapping_sets_options_and_recipes():
    spec = parse_spec(
        {
            **GOOD,
            "prune": {
                "methods": [
                    {"name": "atmc", "bits": 4},
                    {"name": "filter-gm", "steps": 3, "sparsities": [0.5]},
                    "lamp",
                ]
            },
        }
    )
    atmc, gm, lamp = spec.prune.methods
    assert atmc.options == {"bits": 4, "rho": 0.1, "admm_interval": 10, "clean_weight": 0.5}
    assert gm.options == {"steps": 3} and gm.sparsities == (0.5,)
    assert lamp.options == {} and lamp.sparsities is None


def test_an_empty_method_list_is_a_dense_only_grid():
    from apgrid.grid.plan import all_models

    spec = parse_spec({**GOOD, "dense": {"seeds": [0, 1]}, "prune": {"methods": []}})
    assert spec.prune.methods == ()
    assert [p.role for p in all_models(spec)] == ["dense", "dense"]
    with pytest.raises(SpecError, match="prune.methods"):  # a null is a typo, not a choice
        parse_spec({**GOOD, "prune": {"methods": None}})


def test_set_overrides_are_validated_like_the_file(tmp_path, capsys):
    spec = load_spec(
        None, output=str(tmp_path / "o"), overrides=["dense.seeds=[0, 1]", "evaluation.num_samples=100"]
    )
    assert spec.dense.seeds == (0, 1) and spec.evaluation.settings.num_samples == 100
    assert main(["launch", "--set", "prune.sparsities=[1.5]", "--output", str(tmp_path / "o")]) == 2
    assert "prune.sparsities" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_dry_run_plans_a_cluster_spec_without_its_data(tmp_path, capsys):
    """A spec whose data lives on a cluster (no such folder here) is validated and planned."""
    assert (
        main(
            [
                "launch",
                "--dry-run",
                str(DEFAULT_SPEC.parent / "thin-ice.yaml"),
                "--set",
                "dataset.root=/mnt/apgrid/no-such-data",
                "--output",
                str(tmp_path / "o"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    # ATMC's parent is its own (½ clean + ½ adversarial, steps at 80/120/150), not R-ADMM's
    assert out.count("pruned ") == 12 and "plan: 18 models (6 dense trials, 12 prune trials" in out
    assert "GPU-hours on one A100" in out
    assert not (tmp_path / "o").exists()


def test_the_plan_costs_follow_the_recipes_and_the_published_rate():
    from apgrid.grid.plan import forward_flops, plan_cost, recipe_passes

    # ResNet-50 at 224x224: 4.1 G multiply-adds a forward pass (He et al. 2016, Table 1)
    assert forward_flops("torchvision-resnet50", (3, 224, 224), 1000) == pytest.approx(2 * 4.1e9, rel=0.02)
    # PGD-7 AT: each sample of each epoch attacks 7 steps and trains once, a forward and a backward each
    assert recipe_passes({"trainer": "pgd", "pgd_steps": 7, "epochs": 2}, 100) == 2 * 100 * 2 * 8
    assert recipe_passes({"trainer": "fgsm-rs", "epochs": 1}, 100) == 100 * 2 * 2
    one = load_spec(None, overrides=["dense.seeds=[0]"])
    two = load_spec(None, overrides=["dense.seeds=[0, 1]"])  # every model twice
    a, b = plan_cost(one), plan_cost(two)
    assert b.training_passes == pytest.approx(2 * a.training_passes)
    assert b.gpu_hours == pytest.approx(2 * a.gpu_hours)


def test_a_dataset_that_cannot_be_downloaded_is_one_line(tmp_path, monkeypatch):
    import torchvision.datasets as tv

    from apgrid.trainables.data import DatasetError, load_dataset

    def offline(*args, **kwargs):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(tv, "CIFAR10", offline)
    with pytest.raises(DatasetError, match=r"^dataset.download: cifar10 could not be downloaded") as err:
        load_dataset("cifar10", str(tmp_path), download=True)
    assert "\n" not in str(err.value)


def test_list_examples_names_every_shipped_spec(capsys):
    assert main(["list", "examples"]) == 0
    out = capsys.readouterr().out
    assert all(p.name in out for p in DEFAULT_SPEC.parent.glob("*.yaml"))


SECTIONS = {  # each section of the YAML and the dataclass that mirrors it
    "dataset": "DatasetSpec",
    "threat_model": "ThreatModel",
    "dense.recipe": "Recipe",
    "prune.finetune": "Recipe",
    "evaluation": "EvaluationSpec",
    "resources": "Resources",
    "analysis": "AnalysisSpec",
}


@pytest.mark.parametrize("section", SECTIONS)
def test_every_field_is_checked_from_its_type_and_metadata(section):
    """The spec's dataclasses mirror the YAML: every field of a section is a key there, and a
    value of the wrong shape, or outside the bounds its metadata states, is refused naming it."""
    import dataclasses
    import typing

    from apgrid.grid import spec as specs

    cls = getattr(specs, SECTIONS[section])
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        where = f"{section}.{f.name}"
        raw = {"name": "t", "output": "out"}
        node = raw
        for part in section.split("."):
            node = node.setdefault(part, {})
        node[f.name] = {"not": "a value"}
        with pytest.raises(SpecError, match=rf"^{re.escape(where)}: "):
            parse_spec(raw)
        bound = f.metadata.get("min", f.metadata.get("low"))
        if (section, f.name) == ("prune.finetune", "epochs"):
            bound = 0  # fine-tuning may have none: the pruned model as its criterion left it
        if bound is not None and typing.get_args(hints[f.name]) == ():
            node[f.name] = bound - 1
            with pytest.raises(SpecError, match=rf"^{re.escape(where)}: "):
                parse_spec(raw)


def test_packaged_examples_by_name_and_lists_that_say_true_things(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no grid/examples here: the name finds the packaged one
    out = str(tmp_path / "o")
    assert main(["launch", "thin-ice.yaml", "--dry-run", "--set", "dataset.root=/tmp", "--output", out]) == 0
    assert main(["launch", "demo", "--dry-run", "--output", out]) == 0
    assert main(["launch", "no-such-example.yaml", "--dry-run"]) == 2
    assert "apgrid list examples" in capsys.readouterr().err
    assert main(["list", "examples"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.endswith((".", "…"))]
    assert len(lines) == len(list(DEFAULT_SPEC.parent.glob("*.yaml")))  # whole sentences, or marked cut
    assert main(["list", "architectures"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert rows["digits-cnn"].endswith("takes digits") and "cifar10" in rows["resnet18"].split("takes")[1]
    # an architecture that takes digits' 8x8 images plans without a traceback (BN on a 1x1 map)
    assert main(["launch", "--dry-run", "--set", "dense.architectures=[resnet18]", "--output", out]) == 0


@pytest.mark.parametrize("example", ["compressed.yaml", "compressed-cifar100.yaml"])
def test_the_compressed_models_grids_prune_every_criterion_on_one_schedule(example):
    """The compressed-models paper compares filter criteria: one pruned in one shot and another in
    five steps would confound the criterion with the schedule."""
    spec = load_spec(DEFAULT_SPEC.parent / example, overrides=["dataset.root=/tmp"])
    filters = [m for m in spec.prune.methods if m.name.startswith("filter-")]
    assert len(filters) == 3 and len({m.options["steps"] for m in filters}) == 1


def test_hydra_and_the_survey_build_hydras_vgg16():
    """HYDRA (inspire-group/hydra models/vgg_cifar.py) and the survey's benchmark use VGG-16 with a
    2048-256-256 head (apgrid's vgg16-hydra), not the one-linear-head vgg16."""
    thin_ice = load_spec(DEFAULT_SPEC.parent / "thin-ice.yaml", overrides=["dataset.root=/tmp"])
    (hydra,) = [m for m in thin_ice.prune.methods if m.name == "hydra"]
    assert "vgg16-hydra" in hydra.architectures and "vgg16" not in hydra.architectures
    for example in ("survey.yaml", "survey-svhn.yaml"):
        spec = load_spec(DEFAULT_SPEC.parent / example, overrides=["dataset.root=/tmp"])
        assert "vgg16-hydra" in spec.dense.architectures and "vgg16" not in spec.dense.architectures


@pytest.mark.parametrize("shards", [6, 1000])
def test_more_shards_than_blocks_or_samples_are_made_as_many_as_the_blocks(tmp_path, capsys, shards):
    """evaluation.shards is an upper bound, alike beyond the blocks and beyond the samples: the
    plan says how many shards it makes, and why, instead of one refused and the other clamped."""
    args = ["launch", "--dry-run", "--output", str(tmp_path / "o"), "--set", "evaluation.num_samples=5"]
    assert main([*args, "--set", "evaluation.block_size=5", "--set", f"evaluation.shards={shards}"]) == 0
    out = capsys.readouterr().out
    assert f"1 shards a model (evaluation.shards {shards} asked: 5 samples make 1 blocks of 5)" in out


@pytest.mark.parametrize(
    "example", sorted(p.name for p in DEFAULT_SPEC.parent.glob("*.yaml") if p.name != "published.yaml")
)
def test_each_example_reads_back_from_the_spec_yaml_a_grid_writes(example, tmp_path):
    """`resume` runs the spec.yaml a launch wrote: it must read back as the same grid (an empty
    `reported: []` once made every such file invalid)."""
    import yaml

    from apgrid.grid.runner import _spec_yaml

    raw = yaml.safe_load((DEFAULT_SPEC.parent / example).read_text())
    raw["dataset"]["root"] = str(tmp_path)
    spec = parse_spec(raw)
    written = tmp_path / "spec.yaml"
    written.write_text(yaml.safe_dump(_spec_yaml(spec), sort_keys=False))
    again = load_spec(written)
    assert again.fingerprint() == spec.fingerprint()
    assert again.to_dict() == spec.to_dict()
