"""Spec validation: a bad field is named in one line, the exit code is 2, nothing is written."""
import textwrap

import pytest

from grid.cli import main
from grid.spec import DEFAULT_SPEC, SpecError, load_spec, parse_spec

GOOD = {"name": "t", "output": "out"}


def test_demo_spec_is_valid():
    spec = load_spec(DEFAULT_SPEC)
    assert spec.dataset.name == "digits"
    assert len(spec.prune.methods) >= 3 and len(spec.prune.sparsities) >= 2
    assert spec.resolved_tracking_uri.startswith("sqlite:////")  # absolute


@pytest.mark.parametrize("patch, field", [
    ({"prune": {"sparsities": [1.0]}}, "prune.sparsities"),
    ({"prune": {"sparsities": [-0.1]}}, "prune.sparsities"),
    ({"prune": {"methods": ["magic"]}}, "prune.methods"),
    ({"dense": {"architectures": ["resnet1000"]}}, "dense.architectures"),
    ({"dataset": {"name": "imagenet"}}, "dataset.name"),
    ({"threat_model": {"eps": -0.1}}, "threat_model.eps"),
    ({"threat_model": {"eps": 2}}, "threat_model.eps"),
    ({"threat_model": {"eps": "8/0x"}}, "threat_model.eps"),
    ({"evaluation": {"pgd_steps": 0}}, "evaluation.pgd_steps"),
    ({"evaluation": {"num_samples": 5, "shards": 6}}, "evaluation.shards"),
    ({"evaluation": {"autoattack_version": "turbo"}}, "evaluation.autoattack_version"),
    ({"dense": {"recipe": {"trainer": "sgd"}}}, "dense.recipe.trainer"),
    ({"colour": "blue"}, "colour"),
    ({"dataset": {"name": "cifar10"}}, "dataset.root"),
])
def test_bad_field_is_named(patch, field):
    with pytest.raises(SpecError) as err:
        parse_spec({**GOOD, **patch})
    message = str(err.value)
    assert message.startswith(field + ":"), message
    assert "\n" not in message


def test_eps_fraction_is_exact():
    spec = parse_spec({**GOOD, "threat_model": {"eps": "8/255"}})
    assert spec.threat_model.eps == 8 / 255


@pytest.mark.parametrize("text, field", [
    ("name: t\noutput: OUT\nprune: {sparsities: [1.5]}\n", "prune.sparsities"),
    ("name: t\noutput: OUT\nprune: [unclosed\n", "spec:"),
    ("name: t\noutput: OUT\nresources: {gpus_per_trial: 1}\n", "resources.gpus_per_trial"),
])
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
    spec.write_text(textwrap.dedent(f"""
        name: t
        output: {tmp_path / 'out'}
        dataset: {{name: cifar10, root: {tmp_path / 'nowhere'}}}
        dense: {{architectures: [cifar-cnn]}}
    """))
    assert main(["launch", str(spec)]) == 2
    assert "dataset.root" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_help_explains_each_command(capsys):
    for command in ("launch", "resume", "status", "query", "analyze"):
        with pytest.raises(SystemExit) as exit_:
            main([command, "--help"])
        assert exit_.value.code == 0
        assert len(capsys.readouterr().out) > 200
