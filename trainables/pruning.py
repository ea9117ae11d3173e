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


PRUNING_METHODS: dict[str, PruningMethod] = {m.name: m for m in (
    PruningMethod("lwm-local", "A", False, "local", "weight magnitude",
                  "layer-wise magnitude: drop the smallest |w| of each layer, then fine-tune"),
    PruningMethod("lwm-global", "A", False, "global", "weight magnitude",
                  "global magnitude: one |w| threshold across all layers, then fine-tune"),
    PruningMethod("random", "A", False, "local", "random",
                  "random unstructured masks per layer (a baseline), then fine-tune"),
    PruningMethod("hydra", "A", False, "local", "optimised importance score",
                  "HYDRA (Sehwag et al. 2020): learn scores under the adversarial loss with weights "
                  "frozen, keep the top-k per layer, then fine-tune the weights"),
)}


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


def measured_sparsity(model: nn.Module) -> float:
    """Fraction of zero weights over all prunable layers."""
    zeros = total = 0
    for _, m in prunable_layers(model):
        zeros += (m.weight == 0).sum().item()
        total += m.weight.numel()
    return zeros / total


def prune_one_shot(model: nn.Module, method: str, sparsity: float, seed: int) -> None:
    """Apply the masks of a one-shot criterion (every method but HYDRA's score phase)."""
    if method == "lwm-local":
        prune_magnitude(model, sparsity, "local")
    elif method == "lwm-global":
        prune_magnitude(model, sparsity, "global")
    elif method == "random":
        prune_random(model, sparsity, seed)
    else:
        raise ValueError(f"method: '{method}' is not a one-shot criterion; "
                         f"allowed: lwm-local, lwm-global, random")
