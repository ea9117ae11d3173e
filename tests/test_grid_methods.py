"""The new methods inside a real grid: R-ADMM, ATMC, structured filter pruning and boundary-aware
fine-tuning as Tune trials, a user checkpoint evaluated without training, AutoAttack on a subset."""

import mlflow
import pytest
import torch

from apgrid.grid.plan import all_models
from apgrid.grid.runner import launch
from apgrid.grid.spec import parse_spec
from apgrid.grid.store import ModelStore, read_samples
from tests.helpers import STATED

pytestmark = pytest.mark.slow  # end-to-end grids beyond test_grid's: `make test`, not `make check`

N_SAMPLES, AA_SAMPLES = 20, 10


@pytest.fixture(scope="module")
def methods_grid(ray_session, tmp_path_factory, trained, digits):
    root = tmp_path_factory.mktemp("methods")
    checkpoint = root / "user.pt"
    # a bare network (no normalisation layer), as a published checkpoint would be
    torch.save({"state_dict": trained[1].state_dict()}, checkpoint)
    recipe = {"trainer": "fgsm-rs", "epochs": 1, "lr": 0.01, "batch_size": 128}
    spec = parse_spec(
        {
            "name": "methods",
            "output": str(root / "out"),
            "threat_model": {"norm": "Linf", "eps": 0.1},
            # every field stated, so that no method's authors' value makes it a parent of its own:
            # one dense model shared by all five methods
            "dense": {"recipe": {**STATED, "trainer": "fgsm-rs", "epochs": 2, "lr": 0.05, "batch_size": 64}},
            "prune": {
                "sparsities": [0.8],
                "finetune": recipe,
                "search": recipe,
                "methods": [
                    {"name": "r-admm", "layers": "all", "admm_epoch": 1},
                    {"name": "atmc", "bits": 4},
                    {"name": "filter-l1", "sparsities": [0.5]},
                    "boundary-aware",
                    "li20",  # rewinds to the dense trial's initial weights, which the trial passes
                ],
            },
            "evaluation": {
                "num_samples": N_SAMPLES,
                "autoattack_samples": AA_SAMPLES,
                "block_size": 10,
                "shards": 2,
                "actors": 2,
                "pgd_steps": 3,
                "fmn_steps": 30,
            },
            # the normalisation it was trained with is the checkpoint's to state, never assumed
            "checkpoints": [
                {
                    "name": "user-dense",
                    "arch": "digits-cnn",
                    "path": str(checkpoint),
                    "normalization": {"mean": list(digits.mean), "std": list(digits.std)},
                }
            ],
            "analysis": {
                "transfer_attacks": ["fgsm", "pgd"],
                "transfer_samples": 50,
                "bootstrap_resamples": 200,
            },
        }
    )
    launch(spec, log=lambda line: None)
    return spec


def test_every_method_and_the_checkpoint_are_evaluated(methods_grid):
    samples = read_samples(methods_grid.output_dir)
    models = all_models(methods_grid)
    assert len(models) == 7
    assert len(samples) == 7 * N_SAMPLES and not samples.duplicated(["model_id", "sample_idx"]).any()
    by_method = samples.groupby("method")["sparsity_measured"].first()
    for method in ("r-admm", "atmc", "boundary-aware", "li20"):
        assert by_method[method] == pytest.approx(0.8, abs=0.005)
    assert by_method["filter-l1"] > 0.5  # filters gone, and the next layers' inputs with them


def test_autoattack_runs_on_the_first_samples_only(methods_grid):
    samples = read_samples(methods_grid.output_dir)
    attacked = samples["aa_correct"].notna()
    assert (samples["autoattack_attacks"] == "apgd-ce,apgd-t,fab-t,square").all()  # all by default
    assert attacked.equals(samples["sample_idx"] < AA_SAMPLES)
    assert samples["fmn_eps"].notna().all()


def test_user_checkpoint_matches_the_weights_it_was_given(methods_grid, trained, digits):
    store = ModelStore(methods_grid.output_dir)
    plan = next(p for p in all_models(methods_grid) if p.model_id.startswith("ckpt-"))
    state, _ = store.load_weights(plan.model_id)
    for key, value in trained.state_dict().items():
        assert torch.equal(state[key], value), key
    rows = read_samples(methods_grid.output_dir).query("model_id == @plan.model_id")
    expected = (trained(digits.x_test[:N_SAMPLES]).argmax(1) == digits.y_test[:N_SAMPLES]).numpy()
    assert (rows.sort_values("sample_idx")["clean_correct"].to_numpy() == expected).all()


def test_cards_and_mlflow_record_taxonomy_and_costs(methods_grid):
    store = ModelStore(methods_grid.output_dir)
    cards = {p.method: store.card(p.model_id) for p in all_models(methods_grid)}
    assert cards["filter-l1"]["taxonomy"]["structured"] is True
    assert cards["filter-l1"]["parameters"] < cards["dense"]["parameters"] / 2
    assert cards["atmc"]["model_size_bits"] < cards["r-admm"]["model_size_bits"] / 4
    mlflow.set_tracking_uri(methods_grid.resolved_tracking_uri)
    runs = mlflow.search_runs(
        experiment_names=["methods"], filter_string="tags.stage = 'evaluate' and tags.method = 'r-admm'"
    )
    assert len(runs) == 1
    assert runs["tags.pipeline"].iloc[0] == "A" and runs["tags.scope"].iloc[0] == "local"


def test_cost_table_shows_what_structured_pruning_really_removes(methods_grid):
    import pandas as pd

    costs = pd.read_csv(methods_grid.output_dir / "report" / "costs.csv").set_index("method")
    dense = costs.loc["dense"].iloc[0] if costs.loc["dense"].ndim > 1 else costs.loc["dense"]
    filters = costs.loc["filter-l1"]
    assert filters["kind"].startswith("structured") and filters["parameters"] < 0.6 * dense["parameters"]
    assert filters["file_ratio"] < 0.6  # the file itself shrank
    masks = costs.loc["r-admm"]
    assert masks["kind"].startswith("unstructured") and masks["parameters"] == dense["parameters"]
    assert masks["params_kept"] < 0.35 and masks["sparse_MB"] < 0.5 * masks["file_MB"]
    assert costs.loc["atmc", "quantized_MB"] < 0.3 * costs.loc["atmc", "file_MB"]
    assert (costs["latency_ms"] > 0).all()
