"""Unstructured pruning methods and the masks they leave.

Masks are applied with `torch.nn.utils.prune`, which recomputes weight = weight_orig * mask on every
forward pass, so a pruned weight stays zero through any amount of fine-tuning.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize, prune


@dataclass(frozen=True)
class PruningMethod:
    """A registry entry with the survey's taxonomy (Piras et al. 2024, Sec. 3)."""
    name: str
    pipeline: str      # A: prune after training, B: before training, D: during training
    structured: bool
    scope: str         # local: same sparsity per layer; global: one ranking across layers
    criterion: str
    description: str

    @property
    def taxonomy(self) -> dict:
        return {"pipeline": self.pipeline, "structured": self.structured, "scope": self.scope,
                "criterion": self.criterion}


PRUNING_METHODS: dict[str, PruningMethod] = {m.name: m for m in (
    PruningMethod("lwm-local", "A", False, "local", "weight magnitude",
                  "layer-wise magnitude: drop the smallest |w| of each layer, then fine-tune"),
    PruningMethod("lwm-global", "A", False, "global", "weight magnitude",
                  "global magnitude: one |w| threshold across all layers, then fine-tune"),
    PruningMethod("lamp", "A", False, "global", "LAMP score",
                  "LAMP (Lee et al. 2021): global ranking of layer-adaptive magnitude scores, i.e. "
                  "LWM with a global LAMP allocation of per-layer sparsity, then fine-tune"),
    PruningMethod("random", "A", False, "local", "random",
                  "random unstructured masks per layer (a baseline), then fine-tune"),
    PruningMethod("hydra", "A", False, "local", "optimised importance score",
                  "HYDRA (Sehwag et al. 2020): learn scores under the adversarial loss with weights "
                  "frozen, keep the top-k per layer, then fine-tune the weights"),
    PruningMethod("r-admm", "A", False, "local", "ADMM-optimised magnitude",
                  "R-ADMM (Ye et al. 2019): adversarial ADMM phase pulling W towards the sparse "
                  "set, hard prune, masked adversarial retraining; irregular or filter sparsity"),
    PruningMethod("atmc", "D", False, "local", "ADMM-optimised magnitude + quantisation",
                  "ATMC (Gui et al. 2019): adversarial training constrained to sparse, k-bit "
                  "quantised weights by ADMM; model size recorded in bits"),
    PruningMethod("filter-l1", "A", True, "local", "filter L1 norm",
                  "structured: remove the filters of smallest L1 norm (Li et al. 2017) with "
                  "torch-pruning, one-shot or iterative, fine-tuning after each step"),
    PruningMethod("filter-l2", "A", True, "local", "filter L2 norm",
                  "structured: remove the filters of smallest L2 norm, one-shot or iterative"),
    PruningMethod("filter-gm", "A", True, "local", "geometric median (FPGM)",
                  "structured: remove the filters closest to the geometric median of their layer "
                  "(He et al. 2019), one-shot or iterative"),
    PruningMethod("boundary-aware", "A", False, "global", "weight magnitude + boundary weighting",
                  "apgrid's boundary-aware fine-tuning: global magnitude masks, then adversarial "
                  "fine-tuning that up-weights samples near the dense model's decision boundary"),
)}

# Options a spec may set per method, with their defaults (validated in grid/spec.py).
METHOD_OPTIONS: dict[str, dict] = {
    "r-admm": {"rho": 1.0, "sparsity_type": "irregular", "layer_sparsity": {}},
    "atmc": {"rho": 1.0, "bits": 8},
    "filter-l1": {"steps": 1}, "filter-l2": {"steps": 1}, "filter-gm": {"steps": 1},
    "boundary-aware": {"alpha": 2.0},
}
SEARCH_PHASE = ("hydra", "r-admm", "atmc")  # methods whose masks come from a trained phase


def prunable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every conv and linear layer; biases and batch norm are left dense (as HYDRA and LWM do)."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def check_sparsity(sparsity: float) -> None:
    if not (isinstance(sparsity, (int, float)) and 0 <= sparsity < 1):
        raise ValueError(f"sparsity: {sparsity!r} is outside [0, 1)")


# -- one-shot criteria ------------------------------------------------------------------------

def prune_magnitude(model: nn.Module, sparsity: float, scope: str) -> None:
    check_sparsity(sparsity)
    layers = prunable_layers(model)
    if scope == "global":
        prune.global_unstructured([(m, "weight") for _, m in layers],
                                  pruning_method=prune.L1Unstructured, amount=sparsity)
    else:
        for _, m in layers:
            prune.l1_unstructured(m, "weight", amount=sparsity)


def lamp_scores(weight: torch.Tensor) -> torch.Tensor:
    """LAMP score (Lee et al. 2021, Eq. 2): w_u^2 / sum_{v >= u} w_v^2 over the layer's weights
    sorted by ascending magnitude; the largest weight of every layer scores 1."""
    flat = weight.detach().flatten() ** 2
    order = flat.argsort()
    sorted_sq = flat[order]
    tail = sorted_sq.flip(0).cumsum(0).flip(0)  # sum over v >= u
    scores = torch.empty_like(flat)
    scores[order] = sorted_sq / tail.clamp_min(1e-30)
    return scores.view_as(weight)


def prune_lamp(model: nn.Module, sparsity: float) -> None:
    check_sparsity(sparsity)
    layers = [m for _, m in prunable_layers(model)]
    scores = [lamp_scores(m.weight) for m in layers]
    flat = torch.cat([s.flatten() for s in scores])
    keep = torch.zeros_like(flat)
    keep[flat.topk(kept_count(flat.numel(), sparsity)).indices] = 1.0
    for m, chunk in zip(layers, keep.split([s.numel() for s in scores])):
        prune.custom_from_mask(m, "weight", chunk.view_as(m.weight))


def prune_random(model: nn.Module, sparsity: float, seed: int) -> None:
    check_sparsity(sparsity)
    torch.manual_seed(seed)
    for _, m in prunable_layers(model):
        prune.random_unstructured(m, "weight", amount=sparsity)


# -- HYDRA (Sehwag et al., NeurIPS 2020) ------------------------------------------------------

class _TopKStraightThrough(torch.autograd.Function):
    """Binary mask of the k largest scores; the gradient passes straight through (Sec. 3.3)."""

    @staticmethod
    def forward(ctx, scores, k):
        mask = torch.zeros_like(scores)
        mask.view(-1)[scores.flatten().topk(k).indices] = 1.0
        return mask

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def kept_count(numel: int, sparsity: float) -> int:
    return numel - round(sparsity * numel)  # same rounding as torch.nn.utils.prune


class HydraScores(nn.Module):
    """Parametrization weight -> weight * topk(|scores|); only `scores` is trained."""

    def __init__(self, weight: torch.Tensor, sparsity: float):
        super().__init__()
        fan_in = weight[0].numel()
        # Scaled initialisation (Sec. 3.4): s ∝ sqrt(6 / fan_in) * w / max|w|
        init = math.sqrt(6.0 / fan_in) * weight.detach() / weight.detach().abs().max()
        self.scores = nn.Parameter(init.clone())
        self.k = kept_count(weight.numel(), sparsity)

    def forward(self, weight):
        return weight * _TopKStraightThrough.apply(self.scores.abs(), self.k)

    def mask(self) -> torch.Tensor:
        return _TopKStraightThrough.apply(self.scores.detach().abs(), self.k)


def hydra_attach_scores(model: nn.Module, sparsity: float) -> list[nn.Parameter]:
    """Freeze every weight and attach trainable scores; returns the scores to optimise."""
    check_sparsity(sparsity)
    for p in model.parameters():
        p.requires_grad_(False)
    scores = []
    for _, m in prunable_layers(model):
        parametrize.register_parametrization(m, "weight", HydraScores(m.weight, sparsity))
        scores.append(m.parametrizations.weight[0].scores)
    return scores


def hydra_scores(model: nn.Module) -> list[torch.Tensor]:
    return [m.parametrizations.weight[0].scores for _, m in prunable_layers(model)]


def hydra_finalize(model: nn.Module) -> None:
    """Turn learned scores into fixed masks and unfreeze the weights for fine-tuning."""
    for _, m in prunable_layers(model):
        mask = m.parametrizations.weight[0].mask()
        parametrize.remove_parametrizations(m, "weight", leave_parametrized=False)
        prune.custom_from_mask(m, "weight", mask)
    for p in model.parameters():
        p.requires_grad_(True)


# -- masks in and out -------------------------------------------------------------------------

def masks_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: m.weight_mask.detach().clone() for name, m in prunable_layers(model)
            if hasattr(m, "weight_mask")}


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    for name, m in prunable_layers(model):
        if name in masks:
            prune.custom_from_mask(m, "weight", masks[name].to(m.weight.device))


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict with masks folded into the weights (loadable into an unpruned model)."""
    full, state = model.state_dict(), {}
    for key, value in full.items():
        if key.endswith(".weight_orig"):
            stem = key[: -len("_orig")]
            state[stem] = (value * full[stem + "_mask"]).detach().cpu()
        elif not key.endswith(".weight_mask"):
            state[key] = value.detach().cpu()
    return state


def nonzero_count(model: nn.Module) -> int:
    """Non-zero parameters (weights, biases, batch-norm affine), masks folded in."""
    state = plain_state_dict(model)
    names = {name.removesuffix("_orig") for name, _ in model.named_parameters()}
    return sum(int((state[name] != 0).sum()) for name in names)


def prunable_weight_count(model: nn.Module) -> int:
    return sum(m.weight.numel() for _, m in prunable_layers(model))


def measured_sparsity(model: nn.Module, dense_count: int | None = None) -> float:
    """Fraction of the dense model's prunable weights (conv and linear) that are zero or, after
    structured pruning, gone; `dense_count` is the dense model's prunable weight count."""
    nonzero = total = 0
    for _, m in prunable_layers(model):
        nonzero += (m.weight != 0).sum().item()
        total += m.weight.numel()
    return 1 - nonzero / (dense_count or total)


def prune_one_shot(model: nn.Module, method: str, sparsity: float, seed: int) -> None:
    """Apply the masks of a one-shot criterion (every method but HYDRA's score phase)."""
    if method == "lwm-local":
        prune_magnitude(model, sparsity, "local")
    elif method in ("lwm-global", "boundary-aware"):  # boundary-aware changes the loss, not the mask
        prune_magnitude(model, sparsity, "global")
    elif method == "lamp":
        prune_lamp(model, sparsity)
    elif method == "random":
        prune_random(model, sparsity, seed)
    else:
        raise ValueError(f"method: '{method}' is not a one-shot criterion; "
                         f"allowed: lwm-local, lwm-global, lamp, random")
