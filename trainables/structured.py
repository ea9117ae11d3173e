"""Structured filter pruning that physically removes channels, through `torch-pruning`.

Filters are ranked by their L1 norm (Li et al., ICLR 2017), L2 norm, or distance to the geometric
median of their layer (FPGM, He et al., CVPR 2019); torch-pruning's dependency graph removes each
filter together with everything coupled to it (batch norm, the next layer's input channels,
residual partners), so the model really gets smaller and faster. Iterative pruning reaches the
target in `steps` equal increments of the ratio of the *original* filter count, fine-tuning between.
"""

from __future__ import annotations

import torch
from torch import nn


def _importance(criterion: str):
    import torch_pruning as tp

    if criterion == "l1":
        return tp.importance.MagnitudeImportance(p=1, group_reduction="first", normalizer=None)
    if criterion == "l2":
        return tp.importance.MagnitudeImportance(p=2, group_reduction="first", normalizer=None)
    if criterion == "fpgm":
        return tp.importance.FPGMImportance(p=2, group_reduction="first", normalizer=None)
    raise ValueError(f"criterion: unknown '{criterion}'; allowed: l1, l2, fpgm")


def filter_counts(model: nn.Module) -> dict[str, int]:
    """Output filters of every convolution (depthwise ones follow their input and are skipped)."""
    return {
        name: m.out_channels
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d) and not _depthwise(m)
    }


def _depthwise(m: nn.Conv2d) -> bool:
    return m.groups > 1 and m.groups == m.in_channels


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
    import torch_pruning as tp

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


def iterative_ratios(ratio: float, steps: int) -> list[float]:
    return [ratio * (k + 1) / steps for k in range(steps)]


def step_epochs(finetune_epochs: int, steps: int) -> list[int]:
    """Fine-tuning epoch before which each pruning step happens (all at 0 when there is none)."""
    return [(k * finetune_epochs) // steps for k in range(steps)]
