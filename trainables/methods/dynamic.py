"""Masks that change while the network trains: Flying Bird's dynamic sparse adversarial training and
Robust Bird's early-bird stop (Chen et al. 2022, "Sparsity Winning Twice", ICLR; the authors'
VITA-Group/Sparsity-Win-Robust-Generalization, sparselearning/core.py and Robust-Bird/utils/).

Masks are kept as the authors keep them: a 0/1 tensor per layer multiplied into the dense weights
(and SGD's momentum) after every optimiser step, so the weights stay dense parameters that can
regrow; the method turns them into `torch.nn.utils.prune` masks when training ends.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING

import torch
from torch import nn

from apgrid.trainables.fields import Number, Whole
from apgrid.trainables.masks import apply_masks, prunable_layers
from apgrid.trainables.methods.base import PruningMethod, Search, cpu_state, register
from apgrid.trainables.methods.magnitude import prune_magnitude
from apgrid.trainables.methods.recipes import flyingbird, flyingbird_plus, robustbird
from apgrid.trainables.training import robust_loss_and_accuracy

if TYPE_CHECKING:
    from apgrid.trainables.pipeline import PruneJob


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
def zero_removed(
    layers: list[nn.Module], masks: list[torch.Tensor], optimizer: torch.optim.Optimizer
) -> None:
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


class SparseTraining(Search):
    """Flying Bird's search: sparse adversarial training whose masks (0/1 tensors multiplied into
    the weights and momentum after every step) drop and regrow weights every `update_every`
    iterations; the masks, the regrowth's generator and the statistics travel in the state."""

    def __init__(self, job: PruneJob, saved: dict | None):
        named = prunable_layers(job.model)
        self.names, self.layers = [n for n, _ in named], [m for _, m in named]
        self.generator = torch.Generator().manual_seed(job.s.seed)
        self.history = {"val_loss": [], "robust_gap": []}
        if saved:
            job.model.load_state_dict(saved["model"])
            self.masks = [m.to(job.device) for m in saved["sparse_masks"]]
            self.history = saved["history"]
            self.generator.set_state(saved["generator"])
        else:
            job.model.load_state_dict(job.initial_state)
            sizes = [m.weight.numel() for m in self.layers]
            self.masks = random_masks(self.layers, igq_sparsities(sizes, job.s.sparsity), self.generator)
        super().__init__(job, job.model.parameters())
        self.batches = math.ceil(len(job.ds.y_train) / self.recipe.batch_size)

    def begin(self) -> None:
        zero_removed(self.layers, self.masks, self.optimizer)

    def begin_epoch(self, epoch: int) -> None:
        o, epochs = self.job.options, self.job.search_epochs
        self.epoch = epoch
        self.every = o["update_every"] if epoch <= epochs / 2 else o["update_every_late"]
        self.triggers = self.triggers_at(epoch)

    @torch.no_grad()
    def after_step(self, batch: int) -> None:
        zero_removed(self.layers, self.masks, self.optimizer)
        step = self.epoch * self.batches + batch + 1
        if step % self.every:
            return
        total = self.batches * self.job.search_epochs
        rate = death_rate_at(step, total, self.job.options["death_rate"])
        extra = self.extra()
        for i, m in enumerate(self.layers):
            self.masks[i] = update_mask(m.weight, self.masks[i], rate, self.generator, *extra)
        zero_removed(self.layers, self.masks, self.optimizer)

    def end_epoch(self, epoch: int, metrics: dict) -> None:
        self.record(metrics)
        kept = sum(float(m.sum()) for m in self.masks)
        metrics["mask_sparsity"] = 1 - kept / sum(m.numel() for m in self.masks)

    def triggers_at(self, epoch: int) -> tuple[bool, bool]:
        return False, False

    def extra(self) -> tuple[float, float]:
        return 0.0, 0.0

    def record(self, metrics: dict) -> None:
        """Flying Bird keeps no statistics."""

    def state(self) -> dict:
        return {
            "model": cpu_state(self.job.model),
            "sparse_masks": [m.cpu() for m in self.masks],
            "history": self.history,
            "generator": self.generator.get_state(),
        }

    def snapshot(self) -> dict:
        return {**super().snapshot(), "sparse_masks": [m.cpu().clone() for m in self.masks]}

    def restore(self, snapshot: dict) -> None:
        super().restore(snapshot)
        self.masks = [m.to(self.job.device) for m in snapshot["sparse_masks"]]

    def finish(self) -> None:
        apply_masks(self.job.model, dict(zip(self.names, self.masks)))


class AdaptiveSparseTraining(SparseTraining):
    """Flying Bird+'s: the updates drop and regrow more as the training statistics say."""

    def triggers_at(self, epoch: int) -> tuple[bool, bool]:
        o = self.job.options
        if epoch < o["start"] * self.job.search_epochs:
            return False, False
        history = self.history
        return growth_and_pruning_triggers(
            history["val_loss"], history["robust_gap"], o["window"], o["threshold"]
        )

    def extra(self) -> tuple[float, float]:
        prune_more, grow_more = self.triggers
        o = self.job.options
        return (o["extra_death"] if prune_more else 0.0), (o["extra_growth"] if grow_more else 0.0)

    def record(self, metrics: dict) -> None:
        """The validation split's PGD loss and the robust generalisation gap, once an epoch
        (main_adv.py: update_loss_info, update_train_val_diff)."""
        job = self.job
        loss, acc = robust_loss_and_accuracy(
            job.model,
            job.ds.x_val,
            job.ds.y_val,
            eps=job.s.eps,
            norm=job.s.norm,
            device=job.device,
            steps=job.options["val_pgd_steps"],
        )
        self.history["val_loss"].append(loss)
        self.history["robust_gap"].append(metrics["train_adv_acc"] - acc)
        metrics.update(val_pgd_loss=loss, val_pgd_acc=acc)


class EarlyBirdSearch(Search):
    """Robust Bird's search: standard training until the newest global magnitude mask of the conv
    weights is within `distance` of each of the last `window` - 1, then one global prune."""

    def __init__(self, job: PruneJob, saved: dict | None):
        self.convs = [m for _, m in prunable_layers(job.model) if isinstance(m, nn.Conv2d)]
        self.masks, self.found = [], False
        if saved:
            job.model.load_state_dict(saved["model"])
            self.masks, self.found = saved["early_bird_masks"], saved["found"]
        else:
            job.model.load_state_dict(job.initial_state)
        # stage 1: standard training (--stage1 sgd)
        super().__init__(job, job.model.parameters(), replace(job.search, trainer="clean"))

    def stopped(self) -> bool:
        return self.found

    def end_epoch(self, epoch: int, metrics: dict) -> None:
        o = self.job.options
        self.masks = [*self.masks, global_magnitude_mask(self.convs, self.job.s.sparsity)][-o["window"] :]
        if len(self.masks) == o["window"]:
            metrics["early_bird_distance"] = max(mask_distances(self.masks))
            self.found = metrics["early_bird_distance"] <= o["distance"]
        metrics["early_bird_found"] = int(self.found)

    def state(self) -> dict:
        return {"model": cpu_state(self.job.model), "early_bird_masks": self.masks, "found": self.found}

    def finish(self) -> None:
        prune_magnitude(self.job.model, self.job.s.sparsity, "global")


@register
class FlyingBird(PruningMethod):
    """Flying Bird as the authors train it (main_adv.py --fb --dynamic_fre, sparselearning/core.py):
    adversarial training from the initial weights under random masks at the Ideal Gas Quotas'
    per-layer sparsities; every `update_every` iterations (`update_every_late` after half the
    epochs) each layer drops its smallest active weights, the death rate cosine-annealed from 0.5
    to 0.005 over training, and regrows as many at random. Its training is the search recipe (the
    authors: the dense schedule, 200 epochs); no fine-tuning after."""

    name, pipeline, scope = "flyingbird", "D", "global"
    recipe = flyingbird.RECIPE
    implemented = (
        "Chen et al. 2022 and VITA-Group/Sparsity-Win-Robust-Generalization: adversarial training from "
        "the initial weights (the search recipe is its whole training) under random masks at the Ideal "
        "Gas Quotas' layer sparsities; every `update_every` (900) iterations, 1,200 after half the "
        "epochs, each layer drops ceil(rate × active) smallest weights, rate cosine-annealed 0.5 → 0.005 "
        "over all iterations, and regrows as many at random (regrown weights start at 0, momentum masked); "
        "the epoch of best validation PGD accuracy kept (`select: best`, their recipe's)"
    )
    omitted = (
        "regrowth draws the exact count (the reference draws each position with a probability: right in "
        "expectation)"
    )
    criterion = "dynamic sparse: magnitude drop, random regrowth"
    description = (
        "Flying Bird (Chen et al. 2022): sparse adversarial training from scratch whose mask "
        "changes as it trains (drop the smallest weights, regrow as many at random) at a fixed "
        "budget with Ideal-Gas-Quota layer sparsities; trained with the search recipe"
    )
    search_phase = True
    finetunes = False
    needs_initial_state = True
    # utils.py save_checkpoint model_RA_best: the epoch of best validation robust accuracy is kept
    selects_in_search = True
    trains = {"search": {}}  # the search recipe's `select` holds
    # main_adv.py: --death-rate 0.5, --update_frequency 900, --second_frequency 1200 (iterations)
    options = {
        "death_rate": Number(0.5, 0.0, 1.0),
        "update_every": Whole(900, 1),
        "update_every_late": Whole(1200, 1),
        # main_adv.py --test_step 20: the PGD of test_adv(val_loader), whose robust accuracy picks
        # model_RA_best (and Flying Bird+'s triggers read)
        "val_pgd_steps": Whole(20, 1),
    }

    def start_search(self, job: PruneJob, saved: dict | None) -> Search:
        return SparseTraining(job, saved)


@register
class FlyingBirdPlus(FlyingBird):
    """Flying Bird+ (main_adv.py --fbp, Masking.dst_prune / dst_growth): from `start` of the
    epochs on, an update drops `extra_death` x the death rate more weights when the gap between
    training and validation robust accuracy widened in at least half of the last `window` epochs,
    and regrows `extra_growth` more when the validation adversarial loss did not fall in at least
    half of them; the sparsity moves with the training statistics."""

    name = "flyingbird+"
    recipe = flyingbird_plus.RECIPE
    implemented = (
        "the same, and from half the epochs on an update drops 0.4 × rate more when the "
        "train-minus-validation robust accuracy gap widened in ≥ half of the last 4 epochs, and regrows 5"
        " % more when the validation PGD-20 loss did not fall in ≥ half of them; needs `dataset.validation`"
    )
    criterion = "dynamic sparse, adaptive sparsity: magnitude drop, random regrowth"
    description = (
        "Flying Bird+ (Chen et al. 2022): Flying Bird whose sparsity adapts, pruning more when "
        "robust overfitting grows and regrowing more when the validation adversarial loss stalls "
        "(needs a validation split)"
    )
    needs_validation = True
    # main_adv.py: --prune_ratio 0.4, --growth_ratio 0.05, --epoch_range 4, --update_threshold 0.5,
    # --dynamic_epoch 100 of 200 epochs
    options = {
        **FlyingBird.options,
        "extra_death": Number(0.4, 0.0, 10.0),
        "extra_growth": Number(0.05, 0.0, 10.0),
        "window": Whole(4, 1),
        "threshold": Number(0.5, 0.0, 1.0),
        "start": Number(0.5, 0.0, 1.0),
    }

    def start_search(self, job: PruneJob, saved: dict | None) -> Search:
        return AdaptiveSparseTraining(job, saved)


@register
class RobustBird(PruningMethod):
    """Robust Bird as the authors train it (Robust-Bird/train_eb.py, utils/early_bird.py): standard
    (clean) training from the initial weights; after each epoch the global magnitude mask of the
    conv weights at the target; stop when the newest mask is within `distance` (normalised Hamming)
    of each of the last `window` - 1; then one global magnitude prune of conv and linear weights
    (prune_unstructured) and adversarial training of the sparse network (the fine-tuning recipe;
    the authors: 200 PGD-10 epochs)."""

    name, pipeline, scope = "robustbird", "B", "global"
    recipe = robustbird.RECIPE
    implemented = (
        "Chen et al. 2022 (Robust-Bird/): standard training from the initial weights until the newest "
        "global conv-weight magnitude mask is within Hamming distance 0.08 of each of the last 4; one "
        "global magnitude prune (conv and linear); adversarial training of the sparse network with the "
        "fine-tuning recipe"
    )
    omitted = "channel pruning"
    trains = {"search": {"select": "last", "trainer": "clean"}}  # EarlyBirdSearch trains clean
    criterion = "weight magnitude, early-bird mask from standard training"
    description = (
        "Robust Bird (Chen et al. 2022): find the early-bird mask with cheap standard training "
        "(stop when the global magnitude mask stops changing), prune, then adversarially train "
        "the sparse network with the fine-tuning recipe"
    )
    search_phase = True
    needs_initial_state = True
    # unstructure_early_bird_emerge: every distance <= 0.08; EarlyBird(epoch_keep=5)
    options = {"distance": Number(0.08, 0.0, 1.0), "window": Whole(5, 2)}

    def start_search(self, job: PruneJob, saved: dict | None) -> Search:
        return EarlyBirdSearch(job, saved)
