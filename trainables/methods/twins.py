"""TwinRep (Li et al., AAAI 2023): weights trained as the product of twins, elementwise or one twin
per output channel (its structured variant)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn.utils import parametrize

from apgrid.trainables.masks import prunable_layers
from apgrid.trainables.methods.base import PruningMethod, Search, cpu_state, register
from apgrid.trainables.methods.filters import FilterPruning
from apgrid.trainables.methods.magnitude import prune_magnitude
from apgrid.trainables.methods.recipes import twinrep, twinrep_channels

if TYPE_CHECKING:
    from apgrid.trainables.pipeline import PruneJob


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


class TwinTraining(Search):
    """TwinRep's search: adversarial training of the twins from the initial weights; then the
    twins folded back, and the unstructured variant's global magnitude threshold."""

    def __init__(self, job: PruneJob, saved: dict | None, channels: bool):
        job.model.load_state_dict(job.initial_state)
        twin_attach(job.model, channels=channels)
        if saved:
            job.model.load_state_dict(saved["model"])
        super().__init__(job, job.model.parameters())
        self.channels = channels

    def end_epoch(self, epoch: int, metrics: dict) -> None:
        weights = torch.cat([m.weight.detach().abs().flatten() for _, m in prunable_layers(self.job.model)])
        metrics["near_zero_share"] = float((weights < 1e-3).float().mean())

    def state(self) -> dict:
        return {"model": cpu_state(self.job.model)}

    def finish(self) -> None:
        twin_finalize(self.job.model)
        if not self.channels:  # the channel variant's filters go in prune_step
            prune_magnitude(self.job.model, self.job.s.sparsity, "global")


@register
class TwinRep(PruningMethod):
    """TwinRep (Li et al., AAAI 2023, "Learning adversarially robust sparse networks via weight
    reparameterization"): every conv and linear weight trained as the product of two twins under
    adversarial training with weight decay, which acts on the product as an L1 penalty and drives
    weights to zero; then one global magnitude threshold at the target and fine-tuning. No code of
    the authors' was found: the twins' initialisation (the weight split into two equal-magnitude
    factors), training from the initial weights with the search recipe, and the fine-tuning after
    are apgrid's reading of the paper; `twinrep-channels` is its structured variant."""

    name, pipeline, scope = "twinrep", "D", "global"
    recipe = twinrep.RECIPE
    implemented = (
        "Li et al. 2023 (AAAI): every weight the product of two twins, trained adversarially with weight "
        "decay (an L1 penalty on the weight at balance), then one global magnitude threshold and "
        "fine-tuning"
    )
    omitted = (
        "no code of the authors' was found: the twins' split, training from the initial weights and the "
        "fine-tuning are apgrid's reading of the paper"
    )
    criterion = "weight magnitude after twin (W1 * W2) reparametrised training"
    description = (
        "TwinRep (Li et al. 2023): adversarial training from scratch with each weight the product "
        "of two twins, whose weight decay acts as L1 on the weight; then a global magnitude "
        "threshold and fine-tuning (unstructured)"
    )
    search_phase = True
    needs_initial_state = True

    def start_search(self, job: PruneJob, saved: dict | None) -> Search:
        return TwinTraining(job, saved, channels=self.structured)


@register
class TwinRepChannels(TwinRep, FilterPruning):
    """TwinRep's structured variant (the survey: structured, channels): each conv weight trained as
    v * g with one twin g per output channel, whose weight decay acts as a group penalty and
    drives whole filters to zero; then the filters of smallest L2 norm removed with torch-pruning
    at each layer's share (apgrid's filter pruning is per layer; the paper ranks globally)."""

    name, pipeline, scope, structured = "twinrep-channels", "D", "local", True
    recipe = twinrep_channels.RECIPE
    implemented = (
        "TwinRep's structured variant: each conv weight v ⊙ g with one twin g per output channel (the "
        "classifier keeps elementwise twins), whose decay is a group penalty that zeroes whole filters; "
        "then the weakest filters removed with torch-pruning, fine-tuning"
    )
    omitted = (
        "apgrid's reading of the paper as above; filters are removed per layer at the target share, where"
        " the paper ranks globally"
    )
    criterion, importance = "filter L2 norm after channel-twin reparametrised training", "l2"
    description = (
        "TwinRep, structured (Li et al. 2023): adversarial training from scratch with a twin per "
        "output channel, then the weakest filters removed and fine-tuning"
    )
