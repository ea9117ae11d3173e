"""A grid of published checkpoints, as the thin-ice paper's Table 1 re-evaluates them: a dense
network and a HYDRA-pruned child in the published layout (bare, trained on raw [0, 1] inputs,
HYDRA's popup_scores), with the numbers their paper reported; the dense one also pruned by two of
the grid's methods. Nothing is trained densely; Table 1 shows reported - AutoAttack; Table 2 pairs
the published child with its parent; `apgrid export` writes a model-info JSON per model."""

import copy
import json

import pandas as pd
import pytest
import torch
from torch import nn

from apgrid.grid.cli import main
from apgrid.grid.runner import launch
from apgrid.grid.spec import parse_spec
from apgrid.grid.store import read_samples
from tests.helpers import stated

pytestmark = pytest.mark.slow  # an end-to-end grid beyond test_grid's


@pytest.fixture(scope="module")
def checkpoint_grid(ray_session, tmp_path_factory, trained):
    root = tmp_path_factory.mktemp("published")
    bare = copy.deepcopy(trained)[1]  # the network without apgrid's normalisation layer
    torch.save({"state_dict": bare.state_dict(), "epoch": torch.tensor(30)}, root / "dense.pt")
    hydra = dict(bare.state_dict())
    g = torch.Generator().manual_seed(0)
    for name, m in bare.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            hydra[f"{name}.popup_scores"] = torch.randn(m.weight.shape, generator=g)
    torch.save({f"module.{k}": v for k, v in hydra.items()}, root / "hydra.pt")
    spec = parse_spec(
        {
            "name": "published",
            "output": str(root / "out"),
            "threat_model": {"norm": "Linf", "eps": 0.1},
            "checkpoints": [
                {
                    "name": "theirs-dense",
                    "arch": "digits-cnn",
                    "path": str(root / "dense.pt"),
                    "normalization": "none",
                    "prune": True,
                    "reported": {"clean": 0.9, "robust": 0.8, "attack": "PGD-20"},
                },
                {
                    "name": "theirs-hydra",
                    "arch": "digits-cnn",
                    "path": str(root / "hydra.pt"),
                    "normalization": "none",
                    "dense": "theirs-dense",
                    "method": "hydra",
                    "sparsity": 0.9,
                    "reported": {"robust": 0.75, "attack": "PGD-50"},
                },
            ],
            "prune": {
                "methods": ["lwm-global", "lamp"],
                "sparsities": [0.9],
                "finetune": stated(trainer="fgsm-rs", epochs=1, batch_size=128),
            },
            "evaluation": {
                "num_samples": 20,
                "block_size": 10,
                "shards": 2,
                "actors": 2,
                "pgd_steps": 5,
                "fmn_steps": 30,
                "autoattack_attacks": ["apgd-ce"],
            },
            "analysis": {"transfer_attacks": [], "costs": False, "bootstrap_resamples": 100},
        }
    )
    lines = []
    launch(spec, log=lines.append)
    return spec, lines


def test_a_checkpoint_grid_trains_no_dense_model(checkpoint_grid):
    spec, lines = checkpoint_grid
    assert any(line.startswith("[dense] 0 models") for line in lines)
    models = set(read_samples(spec.output_dir)["model_id"])
    assert len(models) == 4 and sum(m.startswith("ckpt-") for m in models) == 2


def test_table1_shows_reported_minus_autoattack(checkpoint_grid):
    spec, _ = checkpoint_grid
    table = pd.read_csv(spec.output_dir / "report" / "table1_reevaluation.csv").set_index("method")
    dense = table.loc["dense"]
    assert dense["reported_robust"] == 0.8 and dense["reported_attack"] == "PGD-20"
    assert dense["drop_reported_minus_aa"] == pytest.approx(0.8 - dense["aa_acc"])
    assert table.loc["hydra", "drop_reported_minus_aa"] == pytest.approx(0.75 - table.loc["hydra", "aa_acc"])
    assert table.loc["lamp"][["reported_robust", "drop_reported_minus_aa"]].isna().all()


def test_the_published_pair_and_the_prunings_of_a_published_model_are_in_table2(checkpoint_grid):
    spec, _ = checkpoint_grid
    table = pd.read_csv(spec.output_dir / "report" / "table2_thin_ice.csv")
    assert sorted(table["method"]) == ["hydra", "lamp", "lwm-global"]
    samples = read_samples(spec.output_dir)
    hydra = samples[samples["method"] == "hydra"]
    assert hydra["sparsity_measured"].iloc[0] == pytest.approx(0.9, abs=0.01)  # popup_scores' masks
    parent = samples[samples["role"] == "dense"]["model_id"].iloc[0]
    assert set(samples[samples["role"] == "pruned"]["dense_model_id"]) == {parent}


def test_export_writes_robustbench_model_info(checkpoint_grid, tmp_path, capsys):
    spec, _ = checkpoint_grid
    assert main(["export", str(spec.output_dir), str(tmp_path / "info")]) == 0
    files = sorted((tmp_path / "info" / "digits" / "Linf").glob("*.json"))  # RobustBench's tree
    assert len(files) == 4
    for path in files:
        info = json.loads(path.read_text())
        for key in (
            "name",
            "dataset",
            "eps",
            "architecture",
            "clean_acc",
            "autoattack_acc",
            "reported",
            "number_forward_passes",
            "additional_data",
            "unreliable",
            "external",
        ):
            assert key in info, key
        assert 0 <= float(info["clean_acc"]) <= 100 and info["apgrid"]["norm"] == "Linf"
        assert info["eps"] == "0.1" and set(info["apgrid"]["fmn_eps_quantiles"]) == {
            "q10",
            "q25",
            "q50",
            "q75",
            "q90",
        }
    dense = next(json.loads(p.read_text()) for p in files if "theirs-dense" in p.name)
    assert dense["reported"] == "80.00"
