"""Masks that change while the network trains: Flying Bird's dynamic sparse adversarial training and
Robust Bird's early-bird stop (Chen et al. 2022, "Sparsity Winning Twice", ICLR; the authors'
VITA-Group/Sparsity-Win-Robust-Generalization, sparselearning/core.py and Robust-Bird/utils/).

Masks are kept as the authors keep them: a 0/1 tensor per layer multiplied into the dense weights
(and SGD's momentum) after every optimiser step, so the weights stay dense parameters that can
regrow; the method turns them into `torch.nn.utils.prune` masks when training ends.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def igq_sparsities(sizes: list[int], sparsity: float) -> list[float]:
    """Per-layer sparsities of the Ideal Gas Quotas (sparselearning/igq.py): a layer of n weights
    keeps n / (f n + 1), with the one force f found by bisection so that the layers together keep
    (1 - sparsity) of all weights; small layers stay denser than large ones."""
    total, target = sum(sizes), (1 - sparsity) * sum(sizes)

    def kept(force: float) -> float:
        return sum(n / (force * n + 1) for n in sizes)

    low, high = 0.0, 1.0
    while kept(high) > target:
        high *= 2
    for _ in range(200):  # kept() falls as the force grows
        mid = (low + high) / 2
        low, high = (mid, high) if kept(mid) > target else (low, mid)
    force = (low + high) / 2
    return [1 - 1 / (force * n + 1) for n in sizes] if total else []


def random_masks(
    layers: list[nn.Module], sparsities: list[float], generator: torch.Generator
) -> list[torch.Tensor]:
    """Each layer's mask with int(s * n) weights removed uniformly at random (the `igq` init)."""
    masks = []
    for m, s in zip(layers, sparsities):
        n = m.weight.numel()
        mask = torch.ones(n)
        mask[torch.randperm(n, generator=generator)[: int(s * n)]] = 0.0
        masks.append(mask.view_as(m.weight).to(m.weight.device))
    return masks


@torch.no_grad()
def apply_masks(layers: list[nn.Module], masks: list[torch.Tensor], optimizer: torch.optim.Optimizer) -> None:
    """Zero the removed weights and their momentum (Masking.apply_mask)."""
    for m, mask in zip(layers, masks):
        m.weight.mul_(mask)
        buffer = optimizer.state.get(m.weight, {}).get("momentum_buffer")
        if buffer is not None:
            buffer.mul_(mask)


def death_rate_at(step: int, total_steps: int, initial: float, final: float = 0.005) -> float:
    """The share of a layer's weights dropped at an update: cosine-annealed per iteration from
    `initial` to 0.005 (CosineDecay: CosineAnnealingLR with eta_min 0.005 over all iterations)."""
    return final + (initial - final) * (1 + math.cos(math.pi * min(step, total_steps) / total_steps)) / 2


@torch.no_grad()
def update_mask(
    weight: torch.Tensor,
    mask: torch.Tensor,
    death_rate: float,
    generator: torch.Generator,
    extra_death: float = 0.0,
    extra_growth: float = 0.0,
) -> torch.Tensor:
    """One topology update of a layer (Masking.truncate_weights): drop the ceil(rate * active)
    active weights of smallest magnitude, then regrow as many at random among the inactive ones
    (the authors' default growth). Flying Bird+ drops ceil(rate * extra_death * active) more and,
    when it grows, regrows (1 + extra_growth) times as many. The authors draw each regrown position
    with a probability (the count right in expectation); this draws the exact count."""
    active = int(mask.sum())
    if active == mask.numel() or active == 0:
        return mask
    removed = math.ceil(death_rate * active)
    dropped = min(active, removed + math.ceil(death_rate * extra_death * active))
    order = torch.where(mask.flatten() > 0, weight.abs().flatten(), torch.inf).argsort()
    new = mask.flatten().clone()
    new[order[:dropped]] = 0.0
    inactive = (new == 0).nonzero().flatten()
    grow = min(len(inactive), int(removed * (1 + extra_growth)))
    new[inactive[torch.randperm(len(inactive), generator=generator)[:grow]]] = 1.0
    return new.view_as(mask)


def growth_and_pruning_triggers(
    val_losses: list[float], robust_gaps: list[float], window: int = 4, threshold: float = 0.5
) -> tuple[bool, bool]:
    """Flying Bird+'s two signals over the last `window` epoch-to-epoch changes (Masking.
    get_dst_ratio): prune more when the gap between training and validation robust accuracy
    widened in at least `threshold` of them; grow more when the validation adversarial loss did not
    fall in at least `threshold` of them."""

    def share(values: list[float], rising) -> float:
        recent = values[-(window + 1) :]
        steps = [b - a for a, b in zip(recent, recent[1:])]
        return sum(rising(s) for s in steps) / len(steps) if steps else 0.0

    return share(robust_gaps, lambda s: s > 0) >= threshold, share(val_losses, lambda s: s >= 0) >= threshold


def global_magnitude_mask(layers: list[nn.Module], sparsity: float) -> torch.Tensor:
    """The early-bird mask (EarlyBird.unstructure_pruning): one |w| threshold over all the conv
    layers' weights, flattened into one 0/1 vector."""
    weights = torch.cat([m.weight.detach().abs().flatten().cpu() for m in layers])
    threshold = weights.sort().values[int(len(weights) * sparsity)]
    return (weights > threshold).float()


def mask_distances(masks: list[torch.Tensor]) -> list[float]:
    """Normalised Hamming distance of the newest mask to each older one (EarlyBird.cal_dist)."""
    newest = masks[-1]
    return [float((newest != older).float().mean()) for older in masks[:-1]]
