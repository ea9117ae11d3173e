"""Optimised importance scores: HYDRA (Sehwag et al., NeurIPS 2020), RST (Fu et al. 2021) and HARP
(Zhao & Wressnegger, ICLR 2023; intellisec/harp)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn.utils import parametrize, prune

from apgrid.trainables.fields import Flag, Number
from apgrid.trainables.masks import check_sparsity, kept_count, prunable_layers
from apgrid.trainables.methods.base import PruningMethod, Search, register
from apgrid.trainables.methods.recipes import harp, hydra, rst

if TYPE_CHECKING:
    from apgrid.trainables.pipeline import PruneJob


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


class ScoreSearch(Search):
    """HYDRA's score phase: the scores (and batch norm, unless frozen) learned, the weights frozen."""

    def __init__(self, job: PruneJob, saved: dict | None, params: list[nn.Parameter]):
        if saved:
            for p, value in zip(params, saved["scores"]):
                p.data.copy_(value)
        super().__init__(job, params)
        self.params = params

    def state(self) -> dict:
        return {"scores": [p.detach().cpu() for p in self.params]}

    def finish(self) -> None:
        hydra_finalize(self.job.model)


class HarpSearch(ScoreSearch):
    """HYDRA's scores and the layer rates, under the compression loss gamma_t * max(density /
    target - 1, 0); gamma_t grows with the epoch until the target is first met, then stays."""

    def __init__(self, job: PruneJob, saved: dict | None, params: list[nn.Parameter]):
        super().__init__(job, saved, params)
        self.frozen = saved["gamma"] if saved else None
        self.gamma = self.frozen

    def begin_epoch(self, epoch: int) -> None:
        self.gamma = self.frozen if self.frozen is not None else (epoch + 1) * self.job.options["gamma"]

    def penalty(self):
        return self.gamma * harp_rate_loss(self.job.model, self.job.s.sparsity)

    def end_epoch(self, epoch: int, metrics: dict) -> None:
        model = self.job.model
        if round(float(harp_rate_loss(model, self.job.s.sparsity).detach()), 4) == 0.0:
            self.frozen = self.gamma  # train.py: the target reached, gamma stays where it is
        metrics.update(harp_density=float(harp_density(model).detach()), harp_gamma=self.gamma)

    def state(self) -> dict:
        return {**super().state(), "gamma": self.frozen}

    def finish(self) -> None:
        self.job.layer_sparsities = harp_finalize(self.job.model, self.job.s.sparsity)


# -- the methods -----------------------------------------------------------------------------


@register
class Hydra(PruningMethod):
    name, pipeline, scope = "hydra", "A", "local"
    recipe = hydra.RECIPE
    implemented = (
        "Sehwag et al. 2020: scaled score init (Sec. 3.4), top-k straight-through (Sec. 3.3), weights "
        "frozen and batch norm trained in the score phase (`freeze_bn` option), fine-tuning; TRADES "
        "parent in `thin-ice.yaml`; best epoch on a held-out split (`select: best`)"
    )
    omitted = "the reference selects on the test set: apgrid never does"
    criterion = "optimised importance score"
    description = (
        "HYDRA (Sehwag et al. 2020): learn scores under the adversarial loss with weights "
        "frozen (batch norm trains, as the reference's default), keep the top-k per "
        "layer, then fine-tune the weights"
    )
    search_phase = True
    options = {"freeze_bn": Flag(False)}  # the reference's --freeze-bn flag

    def start_search(self, job: PruneJob, saved: dict | None) -> Search:
        freeze_bn = job.options["freeze_bn"]
        return ScoreSearch(job, saved, hydra_attach_scores(job.model, job.s.sparsity, freeze_bn=freeze_bn))


@register
class RobustScratchTicket(Hydra):
    name, pipeline, scope = "rst", "B", "local"
    recipe = rst.RECIPE
    implemented = (
        "Fu et al. 2021 (robust scratch tickets): HYDRA-style scores learned under the adversarial loss "
        "on the randomly initialised network (the dense trial's seeded initialisation), weights never "
        "trained, no fine-tuning"
    )
    omitted = "RST's own score initialisation and schedule details"
    criterion = "optimised importance score on random weights"
    description = (
        "RST (Fu et al. 2021, robust scratch tickets): scores learned under the adversarial loss "
        "on the randomly initialised network, which is never trained; the top-k per layer is the "
        "ticket, its weights bit-identical to their initialisation (no fine-tuning)"
    )
    finetunes = False
    needs_initial_state = True

    def start_search(self, job: PruneJob, saved: dict | None) -> Search:
        job.model.load_state_dict(job.initial_state)  # the random network, never the trained one
        return super().start_search(job, saved)


@register
class Harp(PruningMethod):
    """HARP as intellisec/harp trains it (train.py, trainer/adv.py, utils/hw.py): HYDRA's scores
    and one learned density per layer, trained together under the adversarial loss plus
    gamma_t * max(density / target - 1, 0), gamma_t = (epoch + 1) * gamma until the target is
    first met, then frozen; the weights stay frozen (batch norm trains), then fine-tuning."""

    name, pipeline, scope = "harp", "A", "global"
    recipe = harp.RECIPE
    implemented = (
        "Zhao & Wressnegger 2023 and intellisec/harp: HYDRA's scores plus one density per layer, k = "
        "sigmoid(r)(1 − k_min) + k_min with k_min = `alpha` (0.1) × target, started at the target "
        "(uniform strategy); the rate gets the sum of its mask's gradient; loss + γ_t max(density/target "
        "− 1, 0), γ_t = (epoch + 1) `gamma` (0.01) until the target is first met, then frozen; weights "
        "frozen, batch norm trained; fine-tuning"
    )
    omitted = (
        "if the learned rates still keep more than the target, every layer is scaled down alike so that "
        "the model meets the grid's sparsity; channel pruning"
    )
    criterion = "optimised importance score + learned layer rates"
    description = (
        "HARP (Zhao & Wressnegger 2023): learn importance scores and each layer's pruning rate "
        "under the adversarial loss with a compression loss towards the global target, keep the "
        "top scores of each layer at its learned rate, then fine-tune the weights"
    )
    search_phase = True
    # README: --gamma 0.01 for weight pruning; args.py: --alpha 0.1 (rate_min = alpha * k)
    options = {"gamma": Number(0.01, 0.0, 1e3), "alpha": Number(0.1, 0.0, 1.0), "freeze_bn": Flag(False)}

    def start_search(self, job: PruneJob, saved: dict | None) -> Search:
        o = job.options
        params = harp_attach_scores(job.model, job.s.sparsity, o["alpha"], freeze_bn=o["freeze_bn"])
        return HarpSearch(job, saved, params)
