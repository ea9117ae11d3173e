"""What every stage needs of a model's masks, whatever method pruned it: its prunable layers, masks
in and out, the state dict with masks folded in, and the facts a model card records (sparsity,
parameters, non-zeros, size in bits, filters). The pruning methods themselves are in
trainables/methods/.

Masks are applied with `torch.nn.utils.prune`, which recomputes weight = weight_orig * mask on every
forward pass, so a pruned weight stays zero through any amount of fine-tuning.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import prune


def prunable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every conv and linear layer; biases and batch norm are left dense (as HYDRA and LWM do)."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def check_sparsity(sparsity: float) -> None:
    if not (isinstance(sparsity, (int, float)) and 0 <= sparsity < 1):
        raise ValueError(f"sparsity: {sparsity!r} is outside [0, 1)")


def kept_count(numel: int, sparsity: float) -> int:
    return numel - round(sparsity * numel)  # same rounding as torch.nn.utils.prune


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


def fold_masks(model: nn.Module) -> nn.Module:
    """Make the masks permanent: weight = weight_orig * mask, with no mask or hook left behind
    (a plain module that any code, or a pickle, loads without torch's pruning)."""
    for _, layer in prunable_layers(model):
        if prune.is_pruned(layer):
            prune.remove(layer, "weight")
    return model


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


# -- what a model card records ----------------------------------------------------------------


def nonzero_count(model: nn.Module) -> int:
    """Non-zero parameters (weights, biases, batch-norm affine), masks folded in."""
    state = plain_state_dict(model)
    names = {name.removesuffix("_orig") for name, _ in model.named_parameters()}
    return sum(int((state[name] != 0).sum()) for name in names)


def model_facts(model: nn.Module, dense_count: int | None = None, bits: int = 32) -> dict:
    """What a model card and its run record of any model: measured sparsity (of the dense
    parent's prunable weights when `dense_count` is given), parameters, non-zeros and the storage
    of its non-zero weights at `bits` each."""
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


def model_size_bits(model: nn.Module, bits: int = 32) -> int:
    """Storage of the non-zero prunable weights at `bits` each, plus one 32-bit scale per layer
    when quantised; everything else (biases, batch norm) at 32 bits. Index overhead is left out."""
    state = plain_state_dict(model)
    prunable = {f"{n}.weight" for n, _ in prunable_layers(model)}
    total = 0
    for name, _ in model.named_parameters():
        name = name.removesuffix("_orig")
        nonzero = int((state[name] != 0).sum())
        total += nonzero * bits + (32 if bits < 32 else 0) if name in prunable else nonzero * 32
    return total


def filter_counts(model: nn.Module) -> dict[str, int]:
    """Output filters of every convolution (depthwise ones follow their input and are skipped)."""
    return {
        name: m.out_channels
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d) and not _depthwise(m)
    }


def _depthwise(m: nn.Conv2d) -> bool:
    return m.groups > 1 and m.groups == m.in_channels
