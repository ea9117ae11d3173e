"""Magnitude criteria: layer-wise and global magnitude, LAMP, random masks, iterative magnitude
(Sehwag et al. 2019), the boosting ticket's rewind (Li et al. 2020) and apgrid's boundary-aware
fine-tuning, each method beside its maths."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn.utils import prune

from apgrid.trainables.attacks import logit_margin
from apgrid.trainables.fields import Choice, Number, Whole
from apgrid.trainables.masks import check_sparsity, kept_count, prunable_layers
from apgrid.trainables.methods.base import PruningMethod, register
from apgrid.trainables.methods.recipes import (
    boundary_aware,
    lamp,
    li20,
    lwm_global,
    lwm_local,
    random_masks,
    sehwag19,
)
from apgrid.trainables.training import TrainingHooks

if TYPE_CHECKING:
    from apgrid.trainables.pipeline import PruneJob


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


@torch.no_grad()
def rewind(model: nn.Module, initial_state: dict) -> None:
    """Every parameter and buffer back to `initial_state` (the model's weights at
    initialisation), masks kept: the lottery-ticket rewind (Frankle & Carbin 2019)."""
    current = model.state_dict()
    for key, value in initial_state.items():
        target = key[: -len(".weight")] + ".weight_orig" if f"{key}_orig" in current else key
        if target in current and not target.endswith("_mask"):
            current[target].copy_(value)


# -- boundary-aware fine-tuning --------------------------------------------------------------


# Boundary-aware fine-tuning (apgrid's own method; the future work of Piras et al. 2023, Sec. 6).
#
# The thin-ice finding: the samples a pruned model loses (S10) lie close to the dense model's
# decision boundary. So while fine-tuning after pruning, weight each training sample's adversarial
# loss by a decreasing function of its distance to the dense boundary:
#
#     w_i = 1 + alpha * exp(-|d_i| / eps),   normalised to mean 1,
#
# where d_i is a first-order estimate of the dense model's distance to its boundary: the logit margin
# m_i = z_y - max_{j != y} z_j divided by the dual norm of its input gradient (the DeepFool / FMN
# linearisation; L1 for an Linf threat, L2 for L2). Why not FMN itself: FMN costs ~200 forward and
# backward passes per sample, 200 times an epoch over the training set; this costs one pass, is
# computed once per dense model, and ranks samples the way FMN does to first order.


def linearized_distance(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str, device, batch_size: int = 500
) -> torch.Tensor:
    """d_i = m_i / ||grad_x m_i||_* : signed (negative when misclassified), one pass per sample."""
    model.eval()
    out = []
    for start in range(0, len(y), batch_size):
        xb = x[start : start + batch_size].to(device).requires_grad_(True)
        yb = y[start : start + batch_size].to(device)
        margin = logit_margin(model(xb), yb)
        (grad,) = torch.autograd.grad(margin.sum(), xb)
        dual = grad.flatten(1).abs().sum(1) if norm == "Linf" else grad.flatten(1).norm(dim=1)
        out.append((margin / dual.clamp_min(1e-12)).detach().cpu())
    return torch.cat(out)


def boundary_weights(distance: torch.Tensor, eps: float, alpha: float) -> torch.Tensor:
    """w_i = 1 + alpha exp(-|d_i| / eps), scaled to mean 1 (the learning rate keeps its meaning)."""
    w = 1 + alpha * torch.exp(-distance.abs() / eps)
    return w / w.mean()


class SampleWeights(TrainingHooks):
    """Each training sample's adversarial loss times its weight."""

    def __init__(self, weights: torch.Tensor):
        self.weights = weights

    def sample_losses(self, losses, model, x, y, idx):
        return losses * self.weights[idx].to(x.device)


# -- the methods -----------------------------------------------------------------------------


@register
class LayerwiseMagnitude(PruningMethod):
    name, pipeline, scope, criterion = "lwm-local", "A", "local", "weight magnitude"
    recipe = lwm_local.RECIPE
    implemented = "per-layer magnitude masks, adversarial fine-tuning"
    description = "layer-wise magnitude: drop the smallest |w| of each layer, then fine-tune"

    def prune(self, job: PruneJob) -> None:
        prune_magnitude(job.model, job.s.sparsity, "local")


@register
class GlobalMagnitude(PruningMethod):
    name, pipeline, scope, criterion = "lwm-global", "A", "global", "weight magnitude"
    recipe = lwm_global.RECIPE
    implemented = "one threshold across layers"
    description = "global magnitude: one |w| threshold across all layers, then fine-tune"

    def prune(self, job: PruneJob) -> None:
        prune_magnitude(job.model, job.s.sparsity, "global")


@register
class Lamp(PruningMethod):
    name, pipeline, scope, criterion = "lamp", "A", "global", "LAMP score"
    recipe = lamp.RECIPE
    implemented = "Lee et al. 2021, Eq. 2 scores, global ranking"
    description = (
        "LAMP (Lee et al. 2021): global ranking of layer-adaptive magnitude scores, i.e. "
        "LWM with a global LAMP allocation of per-layer sparsity, then fine-tune"
    )

    def prune(self, job: PruneJob) -> None:
        prune_lamp(job.model, job.s.sparsity)


@register
class RandomMasks(PruningMethod):
    name, pipeline, scope, criterion = "random", "A", "local", "random"
    recipe = random_masks.RECIPE
    implemented = "a baseline"
    description = "random unstructured masks per layer (a baseline), then fine-tune"

    def prune(self, job: PruneJob) -> None:
        prune_random(job.model, job.s.sparsity, job.s.seed)


@register
class BoundaryAware(GlobalMagnitude):
    name, pipeline, scope = "boundary-aware", "A", "global"
    recipe = boundary_aware.RECIPE
    implemented = "apgrid's own, below"
    criterion = "weight magnitude + boundary weighting"
    description = (
        "apgrid's boundary-aware fine-tuning: global magnitude masks, then adversarial "
        "fine-tuning that up-weights samples near the dense model's decision boundary"
    )
    options = {"alpha": Number(2.0, 0.0, 1e3)}

    def training_hooks(self, job: PruneJob) -> TrainingHooks:
        """From the dense model, before any pruning (linearized_distance above)."""
        distance = linearized_distance(job.model, job.ds.x_train, job.ds.y_train, job.s.norm, job.device)
        return SampleWeights(boundary_weights(distance, job.s.eps, job.options["alpha"]))


def filter_l1_masks(model: nn.Module, ratio: float, scope: str) -> dict[nn.Conv2d, torch.Tensor]:
    """Masks zeroing the conv filters of smallest L1 norm: `ratio` of each conv's filters (local),
    or `ratio` of all filters under one threshold (global; each conv keeps at least one filter)."""
    convs = [m for _, m in prunable_layers(model) if isinstance(m, nn.Conv2d)]
    norms = [m.weight.detach().abs().flatten(1).sum(1) for m in convs]
    if scope == "global":
        flat = torch.cat(norms)
        keep = torch.zeros_like(flat, dtype=torch.bool)
        keep[flat.topk(kept_count(flat.numel(), ratio)).indices] = True
        kept = list(keep.split([n.numel() for n in norms]))
        for k, n in zip(kept, norms):
            k[n.argmax()] = True
    else:
        kept = []
        for n in norms:
            k = torch.zeros_like(n, dtype=torch.bool)
            k[n.topk(kept_count(n.numel(), ratio)).indices] = True
            kept.append(k)
    return {
        m: k.to(m.weight.dtype).view(-1, 1, 1, 1).expand_as(m.weight).clone() for m, k in zip(convs, kept)
    }


@register
class IterativeMagnitude(PruningMethod):
    # the survey's taxonomy (pralab/AdversarialPruningBenchmark taxonomy/taxonomy.json,
    # Sehwag19_Sehwag2019Towards): global, unstructured and structured (filters), iterative
    name, pipeline, scope = "sehwag19", "A", "global"
    recipe = sehwag19.RECIPE
    implemented = (
        "Sehwag et al. 2019 as the survey's taxonomy classes it: magnitude pruning in `steps` (5) equal "
        "increments, adversarial fine-tuning between, masks only tightening; `scope` global (one "
        "threshold across layers, the taxonomy's) or local (the same share in every layer); "
        "`granularity` weights (unstructured) or filters (the conv filters of smallest L1 norm zeroed)"
    )
    omitted = "the number of steps is apgrid's default, not the paper's; no code of the authors' was found"
    criterion = "weight magnitude, iterative"
    description = (
        "Sehwag et al. 2019 (towards compact and robust networks): magnitude pruning (global or "
        "layer-wise; weights or whole filters) in `steps` equal increments with adversarial "
        "fine-tuning between them"
    )
    iterative = True
    options = {
        "steps": Whole(5, 1),  # apgrid's default; the schedule is the paper's idea
        "scope": Choice("global", ("global", "local")),  # taxonomy: 'Pruning locality: Global (G)'
        # taxonomy: 'Pruning structure: Unstructured (US), Structured (S) filters'
        "granularity": Choice("weights", ("weights", "filters")),
    }

    def prune_step(self, job: PruneJob, ratio: float) -> None:
        """Tighten the masks to `ratio` of the weights (or of the conv filters): what was pruned
        so far is zero, so it is among the smallest and stays pruned."""
        for _, m in prunable_layers(job.model):
            if prune.is_pruned(m):
                prune.remove(m, "weight")
        scope = job.options["scope"]
        if job.options["granularity"] == "weights":
            prune_magnitude(job.model, ratio, scope)
            return
        for conv, mask in filter_l1_masks(job.model, ratio, scope).items():
            prune.custom_from_mask(conv, "weight", mask)


@register
class BoostingTickets(PruningMethod):
    # the survey's taxonomy (pralab/AdversarialPruningBenchmark taxonomy/taxonomy.json): B, global
    name, pipeline, scope = "li20", "B", "global"
    recipe = li20.RECIPE
    implemented = (
        "Li et al. 2020 (boosting tickets): global magnitude mask of the network trained with FGSM, every "
        "weight rewound to its initialisation, retrained under the mask with PGD-AT on the parent's schedule"
    )
    omitted = "the paper's early mask (after a few epochs): apgrid takes the fully trained parent's"
    criterion = "weight magnitude, rewound (lottery ticket)"
    description = (
        "Li et al. 2020 (boosting tickets under adversarial training): global magnitude mask of "
        "the FGSM-trained network, weights rewound to their initialisation, then "
        "retrained under the mask with PGD-AT on the dense network's recipe"
    )
    needs_initial_state = True
    finetunes_like_parent = True  # the ticket trains as the dense network did (survey taxonomy Li20)

    def prune(self, job: PruneJob) -> None:
        prune_magnitude(job.model, job.s.sparsity, "global")
        rewind(job.model, job.initial_state)
