"""Unstructured pruning criteria and the masks they leave (the methods: trainables/methods.py).

Masks are applied with `torch.nn.utils.prune`, which recomputes weight = weight_orig * mask on every
forward pass, so a pruned weight stays zero through any amount of fine-tuning.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import parametrize, prune


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
        prune.global_unstructured(
            [(m, "weight") for _, m in layers], pruning_method=prune.L1Unstructured, amount=sparsity
        )
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


def attach_scores(model: nn.Module, make, freeze_bn: bool = False) -> list[nn.Parameter]:
    """Freeze the conv and linear weights and biases and parametrize each layer's weight with
    `make(weight)`; returns the parameters to optimise: the parametrizations', and the batch-norm
    affine parameters unless `freeze_bn` (HYDRA's utils/model.py freeze_vars leaves batch norm
    trainable without its --freeze-bn; HARP's the same)."""
    batch_norm = [
        p for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) for p in m.parameters()
    ]
    for p in model.parameters():
        p.requires_grad_(False)
    learned = []
    for _, m in prunable_layers(model):
        parametrize.register_parametrization(m, "weight", make(m.weight))
        learned += list(m.parametrizations.weight[0].parameters())
    if freeze_bn:
        return learned
    for p in batch_norm:
        p.requires_grad_(True)
    return learned + batch_norm


def hydra_attach_scores(model: nn.Module, sparsity: float, freeze_bn: bool = False) -> list[nn.Parameter]:
    check_sparsity(sparsity)
    return attach_scores(model, lambda weight: HydraScores(weight, sparsity), freeze_bn)


def hydra_finalize(model: nn.Module) -> None:
    """Turn learned scores into fixed masks and unfreeze the weights for fine-tuning."""
    for _, m in prunable_layers(model):
        mask = m.parametrizations.weight[0].mask()
        parametrize.remove_parametrizations(m, "weight", leave_parametrized=False)
        prune.custom_from_mask(m, "weight", mask)
    for p in model.parameters():
        p.requires_grad_(True)


# -- HARP (Zhao & Wressnegger, ICLR 2023; intellisec/harp) -------------------------------------


class _RateTopK(torch.autograd.Function):
    """The top `density` share of the scores (models/layers.py GetSubnet: int((1 - k) n) pruned);
    the scores get the gradient straight through and the layer's rate its sum."""

    @staticmethod
    def forward(ctx, scores, density):
        mask = torch.zeros_like(scores)
        kept = scores.numel() - int((1 - float(density)) * scores.numel())
        mask.view(-1)[scores.flatten().topk(kept).indices] = 1.0
        return mask

    @staticmethod
    def backward(ctx, grad):
        return grad, grad.sum()


class HarpScores(HydraScores):
    """HYDRA's scores plus a learned layer density k = sigmoid(r) (1 - k_min) + k_min, k_min =
    alpha * target (utils/utils.py rate_act_func), starting at the target in every layer (the
    uniform initial strategy, rate_init_func)."""

    def __init__(self, weight: torch.Tensor, sparsity: float, alpha: float):
        super().__init__(weight, sparsity)
        target = 1 - sparsity
        self.k_min = alpha * target
        start = min(max((target - self.k_min) / (1 - self.k_min), 0.01), 0.99)  # rate_init_func's clip
        self.rate = nn.Parameter(torch.tensor(math.log(start / (1 - start))))

    def density(self) -> torch.Tensor:
        return torch.sigmoid(self.rate) * (1 - self.k_min) + self.k_min

    def forward(self, weight):
        return weight * _RateTopK.apply(self.scores.abs(), self.density())


def harp_attach_scores(
    model: nn.Module, sparsity: float, alpha: float, freeze_bn: bool = False
) -> list[nn.Parameter]:
    check_sparsity(sparsity)
    return attach_scores(model, lambda weight: HarpScores(weight, sparsity, alpha), freeze_bn)


def _harp_layers(model: nn.Module) -> list[tuple[nn.Module, HarpScores]]:
    return [(m, m.parametrizations.weight[0]) for _, m in prunable_layers(model)]


def harp_density(model: nn.Module) -> torch.Tensor:
    """The share of weights the learned layer rates keep, differentiable in the rates."""
    layers = _harp_layers(model)
    total = sum(m.weight.numel() for m, _ in layers)
    return sum(m.weight.numel() * p.density() for m, p in layers) / total


def harp_rate_loss(model: nn.Module, sparsity: float) -> torch.Tensor:
    """HARP's compression loss (utils/hw.py hw_loss): max(density / target - 1, 0)."""
    return torch.clamp(harp_density(model) / (1 - sparsity) - 1.0, min=0.0)


def harp_finalize(model: nn.Module, sparsity: float) -> list[float]:
    """Fixed masks from the learned rates and scores, weights unfrozen; returns each layer's
    sparsity. Where the rates still keep more than the target (the loss is a penalty), every layer
    is scaled down alike so that the model meets the grid's sparsity (apgrid's guarantee)."""
    layers = _harp_layers(model)
    sizes = [m.weight.numel() for m, _ in layers]
    kept = [n - int((1 - float(p.density().detach())) * n) for n, (_, p) in zip(sizes, layers)]
    budget = kept_count(sum(sizes), sparsity)
    if sum(kept) > budget:
        kept = [int(k * budget / sum(kept)) for k in kept]
    for k, (_, p) in zip(kept, layers):
        p.k = max(k, 1)
    hydra_finalize(model)
    return [1 - p.k / n for n, (_, p) in zip(sizes, layers)]


# -- TwinRep (Li et al., AAAI 2023) ------------------------------------------------------------


class TwinProduct(nn.Module):
    """Parametrization weight = a * b, started at a = sign(w) sqrt|w|, b = sqrt|w| (the weight
    unchanged). Weight decay on both factors is at least decay * |w| and equal to it where |a| =
    |b|: L2 on the twins acts as L1 on the weight, and drives weights to zero."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        root = weight.detach().abs().sqrt()
        self.a = nn.Parameter(torch.sign(weight.detach()) * root)
        self.b = nn.Parameter(root.clone())

    def forward(self, weight):
        return self.a * self.b


class ChannelTwins(nn.Module):
    """Parametrization weight = v * g with one g per output channel, started at g = sqrt(|w_c|),
    v = w / g (the weight unchanged): weight decay on both penalises each channel's norm as a
    group, and drives whole channels to zero (TwinRep's structured variant)."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        shape = (-1,) + (1,) * (weight.dim() - 1)
        root = weight.detach().flatten(1).norm(dim=1).clamp_min(1e-12).sqrt().view(shape)
        self.g = nn.Parameter(root)
        self.v = nn.Parameter(weight.detach() / root)

    def forward(self, weight):
        return self.v * self.g


def twin_attach(model: nn.Module, channels: bool = False) -> None:
    """Every conv and linear weight reparametrised as twins: elementwise, or per output channel
    (the classifier keeps elementwise twins: its outputs are the classes, never removed)."""
    layers = prunable_layers(model)
    for i, (_, m) in enumerate(layers):
        twins = ChannelTwins if channels and i < len(layers) - 1 else TwinProduct
        parametrize.register_parametrization(m, "weight", twins(m.weight), unsafe=True)


def twin_finalize(model: nn.Module) -> None:
    """Fold each layer's twins back into one weight."""
    for _, m in prunable_layers(model):
        parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)


@torch.no_grad()
def rewind(model: nn.Module, initial_state: dict) -> None:
    """Every parameter and buffer back to `initial_state` (the model's weights at
    initialisation), masks kept: the lottery-ticket rewind (Frankle & Carbin 2019)."""
    current = model.state_dict()
    for key, value in initial_state.items():
        target = key[: -len(".weight")] + ".weight_orig" if f"{key}_orig" in current else key
        if target in current and not target.endswith("_mask"):
            current[target].copy_(value)


# -- masks in and out -------------------------------------------------------------------------


def masks_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {
        name: m.weight_mask.detach().clone()
        for name, m in prunable_layers(model)
        if hasattr(m, "weight_mask")
    }


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


def model_facts(model: nn.Module, dense_count: int | None = None, bits: int = 32) -> dict:
    """What a model card and its run record of any model: measured sparsity (of the dense
    parent's prunable weights when `dense_count` is given), parameters, non-zeros and the storage
    of its non-zero weights at `bits` each."""
    from apgrid.trainables.admm import model_size_bits

    return {
        "measured_sparsity": measured_sparsity(model, dense_count),
        "parameters": sum(p.numel() for p in model.parameters()),
        "nonzero_parameters": nonzero_count(model),
        "model_size_bits": model_size_bits(model, bits),
    }


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
