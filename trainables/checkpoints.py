"""Published checkpoints as apgrid models: containers, prefixes and layouts adapted, then loaded
strictly into the registry's architecture.

apgrid's CIFAR networks use the key layout the AP codebases and RobustBench publish (see
trainables/models.py), so most published state dicts load as they are. What differs is adapted
here, each adapter one function, and what cannot be adapted is refused in one line naming up to
five missing and five unexpected keys and the architecture the keys fit best:

- containers: weights under `state_dict`, `model`, `net` or `model_state_dict`;
- DataParallel's `module.` prefix;
- HYDRA's pruned checkpoints (inspire-group/hydra models/layers.py): each layer's `popup_scores`
  select the kept weights, the top-k of |scores| at k = 1 - sparsity (its GetSubnet), so the
  checkpoint's sparsity must be given; the mask becomes apgrid's mask;
- the unused `sub_block1` of the TRADES / HYDRA WideResNet, which its forward never calls;
- apgrid's own models stored before the published layout (same tensors in the same order, other
  names): renamed by position, shapes checked one by one.

Input normalisation is the checkpoint's: apgrid's models carry it as their first layer
(`0.mean`, `0.std`); a bare network gets the one its entry states (`normalization: none` or
`{mean, std}`), never the dataset's by default.
"""

from __future__ import annotations

import torch
from torch import nn

from apgrid.errors import ApgridError, short_reason

CONTAINERS = ("state_dict", "model_state_dict", "model", "net")


class CheckpointError(ApgridError, ValueError):
    """A checkpoint that is missing, truncated, corrupt, not a state dict, or of another layout."""


def load_state(path) -> dict:
    """torch.load with weights_only=True, turning every failure into one clear CheckpointError."""
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint: {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, pickle of arbitrary objects, random bytes ...
        raise CheckpointError(
            f"checkpoint: {path} cannot be loaded as weights ({short_reason(exc)})"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint: {path} holds a {type(state).__name__}, not a state dict")
    return state


def unwrap(state: dict) -> dict:
    """The tensors of a checkpoint: out of a container, without DataParallel's prefix."""
    for key in CONTAINERS:
        if isinstance(state.get(key), dict):
            state = state[key]
            break
    return {k.removeprefix("module."): v for k, v in state.items()}


def hydra_masks(state: dict, sparsity: float | None, where: str) -> tuple[dict, dict]:
    """HYDRA's `popup_scores` as masks: each layer keeps its top |scores|, as GetSubnet does: with
    k = 1 - sparsity the fraction kept, the int((1 - k) * n) smallest scores are cut."""
    scores = {k[: -len(".popup_scores")]: v for k, v in state.items() if k.endswith(".popup_scores")}
    if not scores:
        return state, {}
    if sparsity is None or sparsity == 0:
        raise CheckpointError(
            f"checkpoint: {where} holds HYDRA popup_scores; give its sparsity "
            f"(the fraction of weights pruned) in the checkpoint entry"
        )
    masks = {}
    for layer, s in scores.items():
        cut = int((1 - (1 - sparsity)) * s.numel())
        mask = torch.zeros(s.numel())
        mask[s.abs().flatten().topk(s.numel() - cut).indices] = 1.0
        masks[layer] = mask.view_as(s)
    return {k: v for k, v in state.items() if not k.endswith(".popup_scores")}, masks


def drop_unused(state: dict) -> dict:
    """The TRADES / HYDRA WideResNet's `sub_block1` is built but never called."""
    return {k: v for k, v in state.items() if not k.startswith("sub_block1.")}


def by_position(state: dict, target: dict) -> dict | None:
    """`state` renamed to `target`'s keys when both hold the same shapes in the same order (a
    layout renamed, nothing else changed); None when they do not."""
    if len(state) != len(target):
        return None
    if any(tuple(a.shape) != tuple(b.shape) for a, b in zip(state.values(), target.values())):
        return None
    return dict(zip(target, state.values()))


def fit(model: nn.Module, state: dict, masks: dict, where: str, arch: str) -> dict:
    """Load `state` into `model` strictly (filters removed by structured pruning are resized
    first); an older layout of the same tensors is renamed by position. Returns the masks under
    the model's own layer names."""
    from apgrid.trainables.models import fit_to_state

    try:
        fit_to_state(model, state)
    except (ValueError, KeyError, RuntimeError):  # shapes of another network altogether
        raise mismatch(where, arch, state, model.state_dict()) from None
    own = model.state_dict()
    if set(state) != set(own):
        renamed = by_position(state, own)
        if renamed is None:
            raise mismatch(where, arch, state, own)
        names = {
            old.removesuffix(".weight"): new.removesuffix(".weight")
            for old, new in zip(state, renamed)
            if old.endswith(".weight")
        }
        state, masks = renamed, {names.get(k, k): v for k, v in masks.items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(
            f"checkpoint: {where} does not fit architecture {arch} ({short_reason(exc)})"
        ) from None
    return masks


def mismatch(where: str, arch: str, state: dict, own: dict) -> CheckpointError:
    """Keys shown as the network names them (without apgrid's `1.` in front of the network)."""
    missing = [k.removeprefix("1.") for k in own if k not in state]
    unexpected = [k.removeprefix("1.") for k in state if k not in own]

    def listed(keys):
        return f" ({', '.join(keys[:5])}{', ...' if len(keys) > 5 else ''})" if keys else ""

    return CheckpointError(
        f"checkpoint: {where} does not fit architecture {arch}: missing {len(missing)} keys"
        f"{listed(missing)}, unexpected {len(unexpected)}{listed(unexpected)}; nearest "
        f"architecture: {nearest_architecture(state, arch)}"
    )


def nearest_architecture(state: dict, arch: str) -> str:
    """The registry's architecture whose network keys overlap the checkpoint's most."""
    from apgrid.trainables.models import ARCHITECTURES

    keys = {k.removeprefix("1.") for k in state if not k.startswith("0.")}
    best, score = arch, -1.0
    for name, make in ARCHITECTURES.items():
        with torch.device("meta"):
            theirs = set(make(3, 10).state_dict())
        overlap = len(keys & theirs) / max(1, len(keys | theirs))
        if overlap > score:
            best, score = name, overlap
    return f"{best} ({score:.0%} of keys shared)"


def published_model(
    path, arch: str, in_channels: int, num_classes: int, normalization, sparsity: float | None = None
) -> tuple[nn.Module, dict]:
    """A checkpoint as an apgrid model (Normalize + network) and its masks.

    normalization: 'none' (the network takes [0, 1] images), {'mean': [...], 'std': [...]}, or
    None for a checkpoint that carries apgrid's normalisation layer itself."""
    from apgrid.trainables.models import build_model

    state = unwrap(load_state(path))
    if not all(torch.is_tensor(v) for v in state.values()):
        raise CheckpointError(f"checkpoint: {path} is not a state dict of tensors")
    state, masks = hydra_masks(drop_unused(state), sparsity, str(path))
    bare = not any(k.startswith(("0.mean", "0.std")) for k in state)
    mean, std = _normalization(normalization, in_channels, str(path), bare)
    model = build_model(arch, in_channels, num_classes, mean, std)
    if bare:
        state = {
            **{f"0.{k}": v for k, v in model[0].state_dict().items()},
            **{f"1.{k}": v for k, v in state.items()},
        }
        masks = {f"1.{k}": v for k, v in masks.items()}
    masks = fit(model, state, masks, str(path), arch)
    return model, masks


def _normalization(normalization, channels: int, where: str, bare: bool):
    if normalization is None:
        if bare:
            raise CheckpointError(
                f"checkpoint: {where} is a bare network: say which input "
                f"normalisation it was trained with (normalization: none, or "
                f"{{mean: [...], std: [...]}})"
            )
        return [0.0] * channels, [1.0] * channels  # replaced by the file's own
    if normalization == "none":
        return [0.0] * channels, [1.0] * channels
    return list(normalization["mean"]), list(normalization["std"])
