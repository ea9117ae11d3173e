"""Pruning: exact sparsity for each method, masks that survive fine-tuning, HYDRA's score phase."""

import copy

import pytest
import torch

from apgrid.trainables.masks import (
    apply_masks,
    kept_count,
    masks_of,
    measured_sparsity,
    plain_state_dict,
    prunable_layers,
)
from apgrid.trainables.methods.magnitude import prune_magnitude, prune_random
from apgrid.trainables.methods.scores import hydra_attach_scores, hydra_finalize
from apgrid.trainables.training import Recipe
from tests.helpers import train_on_digits


def finetune(model, digits, epochs=1):
    recipe = Recipe(trainer="fgsm-rs", epochs=epochs, lr=0.05, batch_size=128)
    train_on_digits(model, digits, recipe, [p for p in model.parameters() if p.requires_grad], seed=1)


ONE_SHOT = {
    "lwm-local": lambda model, s: prune_magnitude(model, s, "local"),
    "lwm-global": lambda model, s: prune_magnitude(model, s, "global"),
    "random": lambda model, s: prune_random(model, s, seed=0),
}


def layer_sparsities(model):
    return [(m.weight == 0).float().mean().item() for _, m in prunable_layers(model)]


@pytest.mark.parametrize("method", ["lwm-local", "lwm-global", "random"])
@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.95])
def test_one_shot_reaches_target_and_masks_survive_finetuning(trained, digits, method, sparsity):
    model = copy.deepcopy(trained)
    ONE_SHOT[method](model, sparsity)
    assert measured_sparsity(model) == pytest.approx(sparsity, abs=0.005)
    masks = masks_of(model)
    finetune(model, digits)
    for name, m in prunable_layers(model):
        assert torch.all(m.weight[masks[name] == 0] == 0), name
    assert measured_sparsity(model) == pytest.approx(sparsity, abs=0.005)


def test_local_is_uniform_per_layer_and_global_is_not(trained):
    local, glob = copy.deepcopy(trained), copy.deepcopy(trained)
    ONE_SHOT["lwm-local"](local, 0.9)
    ONE_SHOT["lwm-global"](glob, 0.9)
    assert max(layer_sparsities(local)) - min(layer_sparsities(local)) < 0.01
    assert max(layer_sparsities(glob)) - min(layer_sparsities(glob)) > 0.1
    # global keeps exactly the largest |w| across layers
    kept = torch.cat([m.weight_orig[m.weight_mask == 1].abs() for _, m in prunable_layers(glob)])
    cut = torch.cat([m.weight_orig[m.weight_mask == 0].abs() for _, m in prunable_layers(glob)])
    assert kept.min() >= cut.max()


def test_hydra_scores_change_while_weights_stay_frozen(trained, digits):
    model = copy.deepcopy(trained)
    weights_before = {n: m.weight.detach().clone() for n, m in prunable_layers(model)}
    scores = hydra_attach_scores(model, 0.9)
    scores_before = [s.detach().clone() for s in scores]
    # Sec. 3.4: scores start proportional to the weights
    first = prunable_layers(model)[0][1]
    ratio = scores_before[0] / first.parametrizations.weight.original
    assert torch.allclose(ratio[torch.isfinite(ratio)], ratio[torch.isfinite(ratio)].flatten()[0])
    # utils/model.py initialize_scaled_score: the constant is sqrt(6 / fan_in) / max|w|
    w = first.parametrizations.weight.original
    fan_in = first.in_channels * first.kernel_size[0] * first.kernel_size[1]
    assert torch.allclose(scores_before[0], (6 / fan_in) ** 0.5 * w / w.abs().max(), rtol=1e-6, atol=0)
    train_on_digits(model, digits, Recipe(trainer="fgsm-rs", epochs=1, lr=0.1, batch_size=128), scores)
    assert any(not torch.equal(a, b.detach()) for a, b in zip(scores_before, scores))
    for name, m in prunable_layers(model):
        assert torch.equal(m.parametrizations.weight.original, weights_before[name]), name
    learned = {n: s.detach().abs().clone() for (n, _), s in zip(prunable_layers(model), scores)}
    hydra_finalize(model)
    assert measured_sparsity(model) == pytest.approx(0.9, abs=0.005)
    masks = masks_of(model)
    for name, m in prunable_layers(model):
        # Sec. 3.3: each layer keeps the weights of its k largest |scores|, the weights themselves
        # as the dense model had them
        k = int(masks[name].sum())
        assert k == kept_count(m.weight_orig.numel(), 0.9)
        assert learned[name][masks[name] == 1].min() >= learned[name][masks[name] == 0].max(), name
        assert torch.equal(m.weight_orig, weights_before[name])
    finetune(model, digits)
    for name, m in prunable_layers(model):
        assert torch.all(m.weight[masks[name] == 0] == 0)


def test_plain_state_dict_round_trip(trained):
    model = copy.deepcopy(trained)
    ONE_SHOT["lwm-global"](model, 0.9)
    state, masks = plain_state_dict(model), masks_of(model)
    fresh = copy.deepcopy(trained)
    fresh.load_state_dict(state)
    apply_masks(fresh, masks)
    x = torch.rand(4, 1, 8, 8)
    assert torch.equal(fresh(x), model(x))


def test_sparsity_outside_range_is_refused(trained):
    with pytest.raises(ValueError, match="sparsity"):
        ONE_SHOT["lwm-local"](copy.deepcopy(trained), 1.0)
