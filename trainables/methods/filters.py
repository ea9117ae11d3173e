"""Structured filter pruning that physically removes channels, through `torch-pruning`.

Filters are ranked by their L1 norm (Li et al., ICLR 2017), L2 norm, or distance to the geometric
median of their layer (FPGM, He et al., CVPR 2019); torch-pruning's dependency graph removes each
filter together with everything coupled to it (batch norm, the next layer's input channels,
residual partners), so the model really gets smaller and faster. Iterative pruning reaches the
target in `steps` equal increments of the ratio of the *original* filter count, fine-tuning between.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
import torch_pruning as tp
from torch import nn

from apgrid.trainables.fields import Whole
from apgrid.trainables.methods.base import PruningMethod, register
from apgrid.trainables.methods.recipes import filter_gm, filter_l1, filter_l2

if TYPE_CHECKING:
    from apgrid.trainables.pipeline import PruneJob


def _importance(criterion: str):
    if criterion == "l1":
        return tp.importance.MagnitudeImportance(p=1, group_reduction="first", normalizer=None)
    if criterion == "l2":
        return tp.importance.MagnitudeImportance(p=2, group_reduction="first", normalizer=None)
    if criterion == "fpgm":
        return tp.importance.FPGMImportance(p=2, group_reduction="first", normalizer=None)
    raise ValueError(f"criterion: unknown '{criterion}'; allowed: l1, l2, fpgm")


def target_filters(original: int, ratio: float) -> int:
    """Filters kept when `ratio` of the original ones are removed (at least one)."""
    return max(1, int(original * (1 - ratio) + 1e-9))


def prune_filters(
    model: nn.Module, criterion: str, ratio: float, original: dict[str, int], example_input: torch.Tensor
) -> None:
    """Remove filters until each convolution keeps target_filters(original, ratio).

    The ratio refers to the original filter counts, so a resumed or iterative run lands on the
    same counts as a one-shot one. The last layer (the classifier) is never pruned.
    """
    modules = dict(model.named_modules())
    classifier = [m for m in model.modules() if isinstance(m, nn.Linear)][-1:]
    ratios = {}
    for name, count in original.items():
        conv, keep = modules[name], target_filters(count, ratio)
        if conv.out_channels > keep:
            ratios[conv] = 1 - (keep + 0.5) / conv.out_channels  # torch-pruning floors the kept count
    if not ratios:
        return
    untouched = [modules[n] for n in original if modules[n] not in ratios]
    pruner = tp.pruner.MetaPruner(
        model,
        example_input,
        importance=_importance(criterion),
        pruning_ratio=0.0,
        pruning_ratio_dict=ratios,
        ignored_layers=classifier + untouched,
        root_module_types=[nn.Conv2d],
    )
    pruner.step()


class FilterPruning(PruningMethod):
    """Filters removed with torch-pruning (trainables/py), one-shot or in `steps`."""

    pipeline, scope, structured, iterative = "A", "local", True, True
    options = {"steps": Whole(1, 1)}
    importance: ClassVar[str]  # torch-pruning importance: l1, l2, fpgm

    def prune_step(self, job: PruneJob, ratio: float) -> None:
        prune_filters(
            job.model, self.importance, ratio, job.original_filters, job.ds.x_train[:1].to(job.device)
        )


@register
class FilterL1(FilterPruning):
    name, criterion, importance = "filter-l1", "filter L1 norm", "l1"
    recipe = filter_l1.RECIPE
    implemented = (
        "Li et al. 2017, FPGM (He et al. 2019); one-shot or `steps` iterative with fine-tuning between; "
        "channels removed with torch-pruning"
    )
    description = (
        "structured: remove the filters of smallest L1 norm (Li et al. 2017) with "
        "torch-pruning, one-shot or iterative, fine-tuning after each step"
    )


@register
class FilterL2(FilterPruning):
    name, criterion, importance = "filter-l2", "filter L2 norm", "l2"
    recipe = filter_l2.RECIPE
    implemented = (
        "Li et al. 2017, FPGM (He et al. 2019); one-shot or `steps` iterative with fine-tuning between; "
        "channels removed with torch-pruning"
    )
    description = "structured: remove the filters of smallest L2 norm, one-shot or iterative"


@register
class FilterGeometricMedian(FilterPruning):
    name, criterion, importance = "filter-gm", "geometric median (FPGM)", "fpgm"
    recipe = filter_gm.RECIPE
    implemented = (
        "Li et al. 2017, FPGM (He et al. 2019); one-shot or `steps` iterative with fine-tuning between; "
        "channels removed with torch-pruning"
    )
    description = (
        "structured: remove the filters closest to the geometric median of their layer "
        "(He et al. 2019), one-shot or iterative"
    )
