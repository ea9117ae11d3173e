"""The pruning methods: one registry entry each, as Torch-Pruning writes a pruner, one class whose
hooks the prune pipeline (trainables/pipeline.py) calls.

A method states its taxonomy (the survey's: Piras et al. 2024, Sec. 3), its options with their
defaults and checks, and overrides only the hooks it needs:

    search(job, state)    a trained phase that yields the masks (HYDRA's scores, ADMM, Flying
                          Bird's sparse training); methods with one set `search_phase = True` and
                          get the grid's search recipe; `state` is what its last report saved
    prune(job)            one-shot masks of an unstructured criterion, before fine-tuning
    prune_step(job, ratio)   iterative methods (`iterative = True`: filter pruning, Sehwag19):
                          prune to `ratio` of the target, `steps` times between fine-tuning epochs
    sample_weights(job)   a weight per training sample for the fine-tuning loss
    objective(job)        a loss on clean batches replacing the adversarial one (PwoA)
    finetune_step(job)    a callable run after every fine-tuning step (ATMC's codebook)
    finish(job)           last changes before the model is saved (ATMC's quantisation); returns
                          the bits per stored weight

and flags what it needs: `needs_initial_state` (starts from or rewinds to the initial weights),
`needs_validation` (reads the validation split while it trains), `finetunes = False` (no
fine-tuning phase).

Adding a method is one class here (decorated with @register) and a test of the property its paper
states; the spec, `apgrid list methods`, the pipeline, model cards and MLflow tags all read it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from apgrid.errors import show_value as _show
from apgrid.trainables import pruning, structured
from apgrid.trainables.recipes import AuthorsRecipe

# -- options ---------------------------------------------------------------------------------------


class OptionError(ValueError):
    """An option value the method cannot take; the message starts with the option's field."""


@dataclass(frozen=True)
class Number:
    default: float
    low: float
    high: float

    def check(self, value, where: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise OptionError(f"{where}: must be a number, got {_show(value)}")
        if not math.isfinite(value) or not self.low <= value <= self.high:
            raise OptionError(f"{where}: {_show(value)} is outside [{self.low}, {self.high}]")
        return float(value)


@dataclass(frozen=True)
class Whole:
    default: int
    minimum: int
    maximum: int = 2**31 - 1
    also: tuple[int, ...] = ()  # values allowed outside [minimum, maximum] (ATMC: 0 = no quantisation)

    def check(self, value, where: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise OptionError(f"{where}: must be a whole number, got {_show(value)}")
        if value not in self.also and not self.minimum <= value <= self.maximum:
            extra = "".join(f"{v} or " for v in self.also)
            raise OptionError(f"{where}: {_show(value)} is not {extra}{self.minimum}..{self.maximum}")
        return value


@dataclass(frozen=True)
class Choice:
    default: str
    allowed: tuple[str, ...]

    def check(self, value, where: str) -> str:
        if not isinstance(value, str) or value not in self.allowed:
            raise OptionError(f"{where}: unknown {_show(value)}; allowed: {', '.join(self.allowed)}")
        return value


@dataclass(frozen=True)
class Flag:
    default: bool

    def check(self, value, where: str) -> bool:
        if not isinstance(value, bool):
            raise OptionError(f"{where}: {_show(value)} is not true or false")
        return value


@dataclass(frozen=True)
class LayerSparsity:
    """Per-layer sparsities {layer name: sparsity in [0, 1)}; the spec checks the names against
    each architecture's prunable layers."""

    default: dict = field(default_factory=dict)

    def check(self, value, where: str) -> dict:
        if not isinstance(value, dict):
            raise OptionError(f"{where}: must be a mapping of layer names to sparsities")
        out = {}
        for layer, sparsity in value.items():
            ok = isinstance(sparsity, (int, float)) and not isinstance(sparsity, bool)
            if not ok or not math.isfinite(sparsity) or not 0 <= sparsity < 1:
                raise OptionError(f"{where}.{layer}: {_show(sparsity)} is outside [0.0, 1.0)")
            out[str(layer)] = float(sparsity)
        return out


# -- the base class and the registry ----------------------------------------------------------


class PruningMethod:
    name: ClassVar[str]
    pipeline: ClassVar[str]  # A: prune after training, B: before training, D: during training
    structured: ClassVar[bool] = False
    scope: ClassVar[str]  # local: same sparsity per layer; global: one ranking across layers
    criterion: ClassVar[str]
    description: ClassVar[str]
    options: ClassVar[dict[str, Any]] = {}
    search_phase: ClassVar[bool] = False
    finetunes: ClassVar[bool] = True  # False: no fine-tuning phase (RST's ticket, Flying Bird)
    needs_validation: ClassVar[bool] = False  # reads the validation split while it trains
    iterative: ClassVar[bool] = False  # prunes in `steps` between fine-tuning epochs (prune_step)
    needs_initial_state: ClassVar[bool] = False  # rewinds to / starts from the initial weights
    recipe: ClassVar[AuthorsRecipe | None] = None  # its authors' recipe, cited (trainables/recipes.py)

    @property
    def taxonomy(self) -> dict:
        return {
            "pipeline": self.pipeline,
            "structured": self.structured,
            "scope": self.scope,
            "criterion": self.criterion,
        }

    def defaults(self) -> dict:
        return {key: option.default for key, option in self.options.items()}

    def check_options(self, given: dict, where: str) -> dict:
        """The options with defaults filled in; raises OptionError naming the field."""
        for key in given:
            if key not in self.options:
                raise OptionError(
                    f"{where}.{key}: unknown option; allowed: {', '.join(self.options) or 'none'}"
                )
        return {
            **self.defaults(),
            **{key: self.options[key].check(value, f"{where}.{key}") for key, value in given.items()},
        }

    # hooks -------------------------------------------------------------------------------------

    def search(self, job, state: dict | None) -> None:
        raise NotImplementedError(f"{self.name} has no search phase")

    def prune(self, job) -> None:
        """One-shot masks of an unstructured criterion."""

    def prune_step(self, job, ratio: float) -> None:
        raise NotImplementedError(f"{self.name} is not iterative")

    def sample_weights(self, job):
        return None

    def objective(self, job):
        """A loss(model, x, y) -> (loss, logits) on clean batches replacing the recipes' adversarial
        one in every phase, or None."""
        return None

    def finetune_step(self, job):
        """A callable run after every fine-tuning step (projections), or None."""
        return None

    def finish(self, job) -> int:
        return 32


PRUNING_METHODS: dict[str, PruningMethod] = {}


def register(cls: type[PruningMethod]) -> type[PruningMethod]:
    PRUNING_METHODS[cls.name] = cls()
    return cls


def method(name: str) -> PruningMethod:
    if name not in PRUNING_METHODS:
        raise ValueError(f"method: unknown '{name}'; allowed: {', '.join(sorted(PRUNING_METHODS))}")
    return PRUNING_METHODS[name]


def cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict on the CPU, as a search phase's saved state holds it."""
    return {k: v.cpu() for k, v in model.state_dict().items()}


# -- one-shot unstructured criteria -----------------------------------------------------------


@register
class LayerwiseMagnitude(PruningMethod):
    name, pipeline, scope, criterion = "lwm-local", "A", "local", "weight magnitude"
    description = "layer-wise magnitude: drop the smallest |w| of each layer, then fine-tune"

    def prune(self, job) -> None:
        pruning.prune_magnitude(job.model, job.s.sparsity, "local")


@register
class GlobalMagnitude(PruningMethod):
    name, pipeline, scope, criterion = "lwm-global", "A", "global", "weight magnitude"
    description = "global magnitude: one |w| threshold across all layers, then fine-tune"

    def prune(self, job) -> None:
        pruning.prune_magnitude(job.model, job.s.sparsity, "global")


@register
class Lamp(PruningMethod):
    name, pipeline, scope, criterion = "lamp", "A", "global", "LAMP score"
    description = (
        "LAMP (Lee et al. 2021): global ranking of layer-adaptive magnitude scores, i.e. "
        "LWM with a global LAMP allocation of per-layer sparsity, then fine-tune"
    )

    def prune(self, job) -> None:
        pruning.prune_lamp(job.model, job.s.sparsity)


@register
class RandomMasks(PruningMethod):
    name, pipeline, scope, criterion = "random", "A", "local", "random"
    description = "random unstructured masks per layer (a baseline), then fine-tune"

    def prune(self, job) -> None:
        pruning.prune_random(job.model, job.s.sparsity, job.s.seed)


@register
class BoundaryAware(GlobalMagnitude):
    name, pipeline, scope = "boundary-aware", "A", "global"
    criterion = "weight magnitude + boundary weighting"
    description = (
        "apgrid's boundary-aware fine-tuning: global magnitude masks, then adversarial "
        "fine-tuning that up-weights samples near the dense model's decision boundary"
    )
    options = {"alpha": Number(2.0, 0.0, 1e3)}

    def sample_weights(self, job):
        """From the dense model, before any pruning (trainables/boundary.py)."""
        from apgrid.trainables.boundary import boundary_weights, linearized_distance

        distance = linearized_distance(job.model, job.ds.x_train, job.ds.y_train, job.s.norm, job.device)
        return boundary_weights(distance, job.s.eps, job.options["alpha"])


# -- a trained search phase -------------------------------------------------------------------


@register
class Hydra(PruningMethod):
    name, pipeline, scope = "hydra", "A", "local"
    criterion = "optimised importance score"
    description = (
        "HYDRA (Sehwag et al. 2020): learn scores under the adversarial loss with weights "
        "frozen (batch norm trains, as the reference's default), keep the top-k per "
        "layer, then fine-tune the weights"
    )
    search_phase = True
    options = {"freeze_bn": Flag(False)}  # the reference's --freeze-bn flag

    def search(self, job, state) -> None:
        from apgrid.trainables.training import make_optimizer

        params = pruning.hydra_attach_scores(job.model, job.s.sparsity, freeze_bn=job.options["freeze_bn"])
        optimizer = make_optimizer(params, job.search)
        if state:
            for p, saved in zip(params, state["scores"]):
                p.data.copy_(saved)
            optimizer.load_state_dict(state["optimizer"])
        for epoch in range(state["epoch"] if state else 0, job.search_epochs):
            metrics = job.train(optimizer, job.search, epoch)
            job.report(
                {**metrics, "phase": "search", "epoch": epoch + 1, "done": 0},
                {
                    "scores": [p.detach().cpu() for p in params],
                    "optimizer": optimizer.state_dict(),
                    "epoch": epoch + 1,
                },
            )
        pruning.hydra_finalize(job.model)


@register
class Harp(PruningMethod):
    """HARP as intellisec/harp trains it (train.py, trainer/adv.py, utils/hw.py): HYDRA's scores
    and one learned density per layer, trained together under the adversarial loss plus
    gamma_t * max(density / target - 1, 0), gamma_t = (epoch + 1) * gamma until the target is
    first met, then frozen; the weights stay frozen (batch norm trains), then fine-tuning."""

    name, pipeline, scope = "harp", "A", "global"
    criterion = "optimised importance score + learned layer rates"
    description = (
        "HARP (Zhao & Wressnegger 2023): learn importance scores and each layer's pruning rate "
        "under the adversarial loss with a compression loss towards the global target, keep the "
        "top scores of each layer at its learned rate, then fine-tune the weights"
    )
    search_phase = True
    # README: --gamma 0.01 for weight pruning; args.py: --alpha 0.1 (rate_min = alpha * k)
    options = {"gamma": Number(0.01, 0.0, 1e3), "alpha": Number(0.1, 0.0, 1.0), "freeze_bn": Flag(False)}

    def search(self, job, state) -> None:
        from apgrid.trainables.training import make_optimizer

        o, sparsity = job.options, job.s.sparsity
        params = pruning.harp_attach_scores(job.model, sparsity, o["alpha"], freeze_bn=o["freeze_bn"])
        optimizer = make_optimizer(params, job.search)
        frozen = None
        if state:
            for p, saved in zip(params, state["scores"]):
                p.data.copy_(saved)
            optimizer.load_state_dict(state["optimizer"])
            frozen = state["gamma"]
        for epoch in range(state["epoch"] if state else 0, job.search_epochs):
            gamma = frozen if frozen is not None else (epoch + 1) * o["gamma"]
            metrics = job.train(
                optimizer,
                job.search,
                epoch,
                penalty=lambda g=gamma: g * pruning.harp_rate_loss(job.model, sparsity),
            )
            if round(float(pruning.harp_rate_loss(job.model, sparsity).detach()), 4) == 0.0:
                frozen = gamma  # train.py: the target reached, gamma stays where it is
            metrics.update(harp_density=float(pruning.harp_density(job.model).detach()), harp_gamma=gamma)
            job.report(
                {**metrics, "phase": "search", "epoch": epoch + 1, "done": 0},
                {
                    "scores": [p.detach().cpu() for p in params],
                    "optimizer": optimizer.state_dict(),
                    "epoch": epoch + 1,
                    "gamma": frozen,
                },
            )
        job.layer_sparsities = pruning.harp_finalize(job.model, sparsity)


@register
class Mad(PruningMethod):
    """MAD as the authors prune (compute_saliency.py, main_mad_pretrain.py; trainables/saliency.py):
    one pass over the training set, each batch's PGD examples, a soft mask per weight optimised
    for 20 Adam steps (lr 0.1) to lower their loss, the K-FAC second-order saliency of what the
    mask removes, averaged; then the lowest-saliency conv weights pruned by one global ranking
    (each linear layer row by row) and the network fine-tuned."""

    name, pipeline, scope = "mad", "A", "global"
    criterion = "adversarial second-order saliency (K-FAC)"
    description = (
        "MAD (Lee et al. 2022): rank weights by the second-order change of the adversarial loss "
        "when their learned soft mask removes them (K-FAC Hessian), prune the least salient "
        "globally in one shot, then fine-tune"
    )
    # compute_saliency.py: --steps 10 (PGD), mask_epoch=20, Adam lr 0.1; samples 0: the whole set
    options = {
        "pgd_steps": Whole(10, 1),
        "mask_steps": Whole(20, 1),
        "mask_lr": Number(0.1, 0.0, 10.0),
        "samples": Whole(0, 0),
        "batch_size": Whole(128, 1),
    }

    def prune(self, job) -> None:
        from apgrid.trainables.saliency import batch_saliency, mad_masks

        o = job.options
        x, y = job.ds.x_train, job.ds.y_train
        if o["samples"]:
            x, y = x[: o["samples"]], y[: o["samples"]]
        torch.manual_seed(job.s.seed)
        starts = range(0, len(y), o["batch_size"])
        total: dict[str, torch.Tensor] = {}
        for start in starts:
            xb = x[start : start + o["batch_size"]].to(job.device)
            yb = y[start : start + o["batch_size"]].to(job.device)
            batch = batch_saliency(
                job.model,
                xb,
                yb,
                eps=job.s.eps,
                norm=job.s.norm,
                pgd_steps=o["pgd_steps"],
                mask_steps=o["mask_steps"],
                mask_lr=o["mask_lr"],
            )
            for name, s in batch.items():
                total[name] = total.get(name, 0) + s / len(starts)
        pruning.apply_masks(job.model, mad_masks(total, job.model, job.s.sparsity))


@register
class IterativeMagnitude(PruningMethod):
    name, pipeline, scope = "sehwag19", "A", "local"
    criterion = "weight magnitude, iterative"
    description = (
        "Sehwag et al. 2019 (towards compact and robust networks): layer-wise magnitude pruning in "
        "`steps` equal increments with adversarial fine-tuning between them"
    )
    iterative = True
    options = {"steps": Whole(5, 1)}  # apgrid's default; the schedule is the paper's idea

    def prune_step(self, job, ratio: float) -> None:
        """Tighten every layer's mask to `ratio` of its weights: the weights pruned so far are
        zero, so they are among the smallest and stay pruned."""
        from torch.nn.utils import prune

        for _, m in pruning.prunable_layers(job.model):
            if prune.is_pruned(m):
                prune.remove(m, "weight")
        pruning.prune_magnitude(job.model, ratio, "local")


@register
class RobustScratchTicket(Hydra):
    name, pipeline, scope = "rst", "B", "local"
    criterion = "optimised importance score on random weights"
    description = (
        "RST (Fu et al. 2021, robust scratch tickets): scores learned under the adversarial loss "
        "on the randomly initialised network, which is never trained; the top-k per layer is the "
        "ticket, its weights bit-identical to their initialisation (no fine-tuning)"
    )
    finetunes = False
    needs_initial_state = True

    def search(self, job, state) -> None:
        job.model.load_state_dict(job.initial_state)  # the random network, never the trained one
        super().search(job, state)


@register
class BoostingTickets(PruningMethod):
    # the survey's taxonomy (pralab/AdversarialPruningBenchmark taxonomy/taxonomy.json): B, global
    name, pipeline, scope = "li20", "B", "global"
    criterion = "weight magnitude, rewound (lottery ticket)"
    description = (
        "Li et al. 2020 (boosting tickets under adversarial training): global magnitude mask of "
        "the adversarially trained network, weights rewound to their initialisation, then "
        "retrained under the mask with the fine-tuning recipe"
    )
    needs_initial_state = True

    def prune(self, job) -> None:
        pruning.prune_magnitude(job.model, job.s.sparsity, "global")
        pruning.rewind(job.model, job.initial_state)


@register
class FlyingBird(PruningMethod):
    """Flying Bird as the authors train it (main_adv.py --fb --dynamic_fre, sparselearning/core.py):
    adversarial training from the initial weights under random masks at the Ideal Gas Quotas'
    per-layer sparsities; every `update_every` iterations (`update_every_late` after half the
    epochs) each layer drops its smallest active weights, the death rate cosine-annealed from 0.5
    to 0.005 over training, and regrows as many at random. Its training is the search recipe (the
    authors: the dense schedule, 200 epochs); no fine-tuning after."""

    name, pipeline, scope = "flyingbird", "D", "global"
    criterion = "dynamic sparse: magnitude drop, random regrowth"
    description = (
        "Flying Bird (Chen et al. 2022): sparse adversarial training from scratch whose mask "
        "changes as it trains (drop the smallest weights, regrow as many at random) at a fixed "
        "budget with Ideal-Gas-Quota layer sparsities; trained with the search recipe"
    )
    search_phase = True
    finetunes = False
    needs_initial_state = True
    # main_adv.py: --death-rate 0.5, --update_frequency 900, --second_frequency 1200 (iterations)
    options = {
        "death_rate": Number(0.5, 0.0, 1.0),
        "update_every": Whole(900, 1),
        "update_every_late": Whole(1200, 1),
    }

    def search(self, job, state) -> None:
        from apgrid.trainables import dynamic_sparsity as dst
        from apgrid.trainables.training import make_optimizer

        o, recipe, epochs = job.options, job.search, job.search_epochs
        named = pruning.prunable_layers(job.model)
        layers = [m for _, m in named]
        generator = torch.Generator().manual_seed(job.s.seed)
        history = {"val_loss": [], "robust_gap": []}
        if state:
            job.model.load_state_dict(state["model"])
            masks = [m.to(job.device) for m in state["sparse_masks"]]
            history = state["history"]
            generator.set_state(state["generator"])
        else:
            job.model.load_state_dict(job.initial_state)
            sizes = [m.weight.numel() for m in layers]
            masks = dst.random_masks(layers, dst.igq_sparsities(sizes, job.s.sparsity), generator)
        optimizer = make_optimizer(job.model.parameters(), recipe)
        if state:
            optimizer.load_state_dict(state["optimizer"])
        dst.apply_masks(layers, masks, optimizer)
        batches = math.ceil(len(job.ds.y_train) / recipe.batch_size)
        for epoch in range(state["epoch"] if state else 0, epochs):
            every = o["update_every"] if epoch <= epochs / 2 else o["update_every_late"]
            triggers = self.triggers(job, history, epoch, epochs)

            @torch.no_grad()
            def after_step(batch: int, epoch=epoch, every=every, triggers=triggers) -> None:
                dst.apply_masks(layers, masks, optimizer)
                step = epoch * batches + batch + 1
                if step % every:
                    return
                rate = dst.death_rate_at(step, batches * epochs, o["death_rate"])
                extra = self.extra(job, triggers)
                for i, m in enumerate(layers):
                    masks[i] = dst.update_mask(m.weight, masks[i], rate, generator, *extra)
                dst.apply_masks(layers, masks, optimizer)

            metrics = job.train(optimizer, recipe, epoch, after_step=after_step)
            self.record(job, history, metrics)
            kept = sum(float(m.sum()) for m in masks)
            metrics["mask_sparsity"] = 1 - kept / sum(m.numel() for m in masks)
            job.report(
                {**metrics, "phase": "search", "epoch": epoch + 1, "done": 0},
                {
                    "model": cpu_state(job.model),
                    # not "masks": a state holding that key is a fine-tuning one (PruneJob.run)
                    "sparse_masks": [m.cpu() for m in masks],
                    "optimizer": optimizer.state_dict(),
                    "epoch": epoch + 1,
                    "history": history,
                    "generator": generator.get_state(),
                },
            )
        pruning.apply_masks(job.model, {name: mask for (name, _), mask in zip(named, masks)})

    def triggers(self, job, history: dict, epoch: int, epochs: int) -> tuple[bool, bool]:
        return False, False

    def extra(self, job, triggers: tuple[bool, bool]) -> tuple[float, float]:
        return 0.0, 0.0

    def record(self, job, history: dict, metrics: dict) -> None:
        """Flying Bird keeps no statistics."""


@register
class FlyingBirdPlus(FlyingBird):
    """Flying Bird+ (main_adv.py --fbp, Masking.dst_prune / dst_growth): from `start` of the
    epochs on, an update drops `extra_death` x the death rate more weights when the gap between
    training and validation robust accuracy widened in at least half of the last `window` epochs,
    and regrows `extra_growth` more when the validation adversarial loss did not fall in at least
    half of them; the sparsity moves with the training statistics."""

    name = "flyingbird+"
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

    def triggers(self, job, history, epoch, epochs) -> tuple[bool, bool]:
        from apgrid.trainables.dynamic_sparsity import growth_and_pruning_triggers

        if epoch < job.options["start"] * epochs:
            return False, False
        o = job.options
        return growth_and_pruning_triggers(
            history["val_loss"], history["robust_gap"], o["window"], o["threshold"]
        )

    def extra(self, job, triggers) -> tuple[float, float]:
        prune_more, grow_more = triggers
        return (job.options["extra_death"] if prune_more else 0.0), (
            job.options["extra_growth"] if grow_more else 0.0
        )

    def record(self, job, history, metrics) -> None:
        """The validation split's PGD loss and the robust generalisation gap, once an epoch
        (main_adv.py: update_loss_info, update_train_val_diff)."""
        from apgrid.trainables.training import robust_loss_and_accuracy

        loss, acc = robust_loss_and_accuracy(
            job.model, job.ds.x_val, job.ds.y_val, eps=job.s.eps, norm=job.s.norm, device=job.device
        )
        history["val_loss"].append(loss)
        history["robust_gap"].append(metrics["train_adv_acc"] - acc)
        metrics.update(val_pgd_loss=loss, val_pgd_acc=acc)


@register
class RobustBird(PruningMethod):
    """Robust Bird as the authors train it (Robust-Bird/train_eb.py, utils/early_bird.py): standard
    (clean) training from the initial weights; after each epoch the global magnitude mask of the
    conv weights at the target; stop when the newest mask is within `distance` (normalised Hamming)
    of each of the last `window` - 1; then one global magnitude prune of conv and linear weights
    (prune_unstructured) and adversarial training of the sparse network (the fine-tuning recipe;
    the authors: 200 PGD-10 epochs)."""

    name, pipeline, scope = "robustbird", "B", "global"
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

    def search(self, job, state) -> None:
        from dataclasses import replace

        from apgrid.trainables import dynamic_sparsity as dst
        from apgrid.trainables.training import make_optimizer

        o = job.options
        convs = [m for _, m in pruning.prunable_layers(job.model) if isinstance(m, torch.nn.Conv2d)]
        recipe = replace(job.search, trainer="clean")  # stage 1: standard training (--stage1 sgd)
        optimizer = make_optimizer(job.model.parameters(), recipe)
        masks, found = [], False
        if state:
            job.model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            masks, found = state["early_bird_masks"], state["found"]
        else:
            job.model.load_state_dict(job.initial_state)
        for epoch in range(state["epoch"] if state else 0, job.search_epochs):
            if found:
                break
            metrics = job.train(optimizer, recipe, epoch)
            masks = [*masks, dst.global_magnitude_mask(convs, job.s.sparsity)][-o["window"] :]
            if len(masks) == o["window"]:
                metrics["early_bird_distance"] = max(dst.mask_distances(masks))
                found = metrics["early_bird_distance"] <= o["distance"]
            metrics["early_bird_found"] = int(found)
            job.report(
                {**metrics, "phase": "search", "epoch": epoch + 1, "done": 0},
                {
                    "model": cpu_state(job.model),
                    "optimizer": optimizer.state_dict(),
                    "early_bird_masks": masks,  # not "masks": that key marks a fine-tuning state
                    "found": found,
                    "epoch": epoch + 1,
                },
            )
        pruning.prune_magnitude(job.model, job.s.sparsity, "global")


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
    criterion = "weight magnitude after twin (W1 * W2) reparametrised training"
    description = (
        "TwinRep (Li et al. 2023): adversarial training from scratch with each weight the product "
        "of two twins, whose weight decay acts as L1 on the weight; then a global magnitude "
        "threshold and fine-tuning (unstructured)"
    )
    search_phase = True
    needs_initial_state = True

    def search(self, job, state) -> None:
        from apgrid.trainables.training import make_optimizer

        job.model.load_state_dict(job.initial_state)
        pruning.twin_attach(job.model, channels=self.structured)
        optimizer = make_optimizer(job.model.parameters(), job.search)
        if state:
            job.model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
        for epoch in range(state["epoch"] if state else 0, job.search_epochs):
            metrics = job.train(optimizer, job.search, epoch)
            weights = torch.cat(
                [m.weight.detach().abs().flatten() for _, m in pruning.prunable_layers(job.model)]
            )
            metrics["near_zero_share"] = float((weights < 1e-3).float().mean())
            job.report(
                {**metrics, "phase": "search", "epoch": epoch + 1, "done": 0},
                {
                    "model": cpu_state(job.model),
                    "optimizer": optimizer.state_dict(),
                    "epoch": epoch + 1,
                },
            )
        pruning.twin_finalize(job.model)
        if not self.structured:  # the channel variant's filters go in prune_step
            pruning.prune_magnitude(job.model, job.s.sparsity, "global")


@register
class RobustAdmm(PruningMethod):
    """The ADMM phase (trainables/admm.py), then hard masks: Z and U are updated every
    `admm_epoch` epochs and rho grows by `rho_factor` at each update."""

    name, pipeline, scope = "r-admm", "A", "local"
    criterion = "ADMM-optimised magnitude"
    description = (
        "R-ADMM (Ye et al. 2019): adversarial ADMM phase pulling W towards the sparse "
        "set, hard prune, masked adversarial retraining; irregular or filter sparsity"
    )
    search_phase = True
    # yeshaokai/Robustness-Aware-Pruning-ADMM ADMM_examples/cifar10/config.yaml.example: rho
    # 0.001, multi_rho (x1.3 at each update, admm/admm.py), admm_epoch 20, conv layers' prune ratios
    options = {
        "rho": Number(0.001, 0.0, 1e3),
        "rho_factor": Number(1.3, 1.0, 100.0),
        "admm_epoch": Whole(20, 1),
        "layers": Choice("conv", ("conv", "all")),
        "sparsity_type": Choice("irregular", ("irregular", "filter")),
        "layer_sparsity": LayerSparsity(),
    }

    def admm(self, job):
        from apgrid.trainables.admm import Admm, make_projection

        o = job.options
        return Admm(
            job.model,
            job.s.sparsity,
            o["layer_sparsity"],
            o["rho"],
            make_projection(o["sparsity_type"]),
            o["sparsity_type"],
            layers=o["layers"],
            rho_factor=o["rho_factor"],
        )

    def learning_rate(self, job, epoch: int) -> float:
        """R-ADMM's admm_adjust_learning_rate: the search lr at each Z/U update, then a tenth
        after every third of admm_epoch."""
        every = job.options["admm_epoch"]
        return job.search.lr * 0.1 ** ((epoch % every) // (every / 3))

    def search(self, job, state) -> None:
        from apgrid.trainables.training import make_optimizer

        admm = self.admm(job)
        optimizer = make_optimizer(job.model.parameters(), job.search)
        if state:
            job.model.load_state_dict(state["model"])
            admm.load(state["admm"], job.device)
            optimizer.load_state_dict(state["optimizer"])
        every = job.options["admm_epoch"]
        for epoch in range(state["epoch"] if state else 0, job.search_epochs):
            metrics = job.train(
                optimizer, job.search, epoch, penalty=admm.penalty, lr=self.learning_rate(job, epoch)
            )
            if (epoch + 1) % every == 0:  # the reference: after every admm_epoch epochs
                metrics["admm_residual"] = admm.update()
                metrics["admm_rho"] = admm.rho
            else:
                metrics["admm_residual"] = admm.residual()
            job.report(
                {**metrics, "phase": "search", "epoch": epoch + 1, "done": 0},
                {
                    "model": cpu_state(job.model),
                    "admm": admm.state(),
                    "optimizer": optimizer.state_dict(),
                    "epoch": epoch + 1,
                },
            )
        pruning.apply_masks(job.model, admm.hard_masks())


@register
class Pwoa(RobustAdmm):
    """PwoA as the authors run it (scripts/cifar10.sh, core/train_hsic_prune.py, math/admm.py):
    R-ADMM's phases (layer-wise irregular sparsity, Z/U every `admm_epoch` epochs from rho 0.01
    growing x1.35, the ADMM learning-rate cycle) where every loss, in the ADMM phase and in the
    masked retraining, is self-distillation from the adversarially trained dense model at
    temperature 30 (weight 10, KLDivLoss(log_target) x T^2) plus the HSIC bottleneck on each
    layer's output, 2e-5 HSIC(Z, X) - 1e-4 HSIC(Z, Y), on clean inputs: no cross-entropy, no
    adversarial examples (xentropy_weight 0, mix_ratio 0). apgrid takes every conv and linear
    layer's output as Z where the authors' networks return their blocks' outputs."""

    name, pipeline, scope = "pwoa", "A", "local"
    criterion = "ADMM-optimised magnitude, distilled without adversarial examples"
    description = (
        "PwoA (Jian et al. 2022): prune an adversarially trained network by ADMM and retrain it "
        "under its masks with self-distillation from the dense model and the HSIC bottleneck, "
        "on clean data only"
    )
    options = {
        **RobustAdmm.options,
        "rho": Number(0.01, 0.0, 1e3),  # cifar10.sh: --rho 0.01
        "rho_factor": Number(1.35, 1.0, 100.0),  # admm_multi_rho_scheduler: x1.35
        "admm_epoch": Whole(3, 1),  # --admm-epochs 3
        "temperature": Number(30.0, 0.01, 1e3),  # --distill_temp 30
        "distill_weight": Number(10.0, 0.0, 1e3),  # --distill_alpha 10
        "hsic_x": Number(2e-5, 0.0, 1e3),  # lx
        "hsic_y": Number(1e-4, 0.0, 1e3),  # ly
        "sigma": Number(5.0, 1e-6, 1e6),  # general-prune-hsicbt-cifar10.yaml: sigma 5, k_type_y linear
    }

    def objective(self, job):
        import copy

        import torch.nn.functional as F

        from apgrid.trainables.hsic import hsic_from, resolvent

        o = job.options
        teacher = copy.deepcopy(job.model).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        outputs: list[torch.Tensor] = []
        layers = [m for _, m in pruning.prunable_layers(job.model)]
        for m in layers:
            m.register_forward_hook(lambda mod, inp, out: outputs.append(out) if mod.training else None)

        def loss(model, x, y):
            outputs.clear()
            logits = model(x)
            with torch.no_grad():
                target = teacher(x)
            t = o["temperature"]
            distill = F.kl_div(  # KLDivLoss(log_target=True)'s default: the mean over every entry
                F.log_softmax(logits / t, 1), F.log_softmax(target / t, 1), reduction="none", log_target=True
            ).mean()
            total = o["distill_weight"] * t * t * distill
            if o["hsic_x"] or o["hsic_y"]:  # the input's and labels' resolvents serve every layer
                r_x = resolvent(x, o["sigma"])
                r_y = resolvent(F.one_hot(y, logits.shape[1]).float(), o["sigma"], "linear")
                for z in outputs:
                    r_z = resolvent(z, o["sigma"])
                    total = total + o["hsic_x"] * hsic_from(r_z, r_x) - o["hsic_y"] * hsic_from(r_z, r_y)
            return total, logits

        return loss


@register
class Atmc(PruningMethod):
    """ATMC as VITA-Group/ATMC trains it (cifar/train_proj_admm_quant.py, cifar/util_trts.py
    model_train_proj_prune_admm_quant): the loss is half clean, half adversarial cross-entropy;
    after every optimiser step the weights are projected onto the global sparse set (l0proj, one
    ranking across layers); every `admm_interval` batches the quantisation's ADMM variables move,
    Z = k-means-quantise(W + U) on W's support with zero a fixed level, U += W - Z, and the loss
    carries rho/2 ||W - Z + U||^2 (rho 0.1). The model that comes out is Z, its codebook then
    enforced after every fine-tuning step (not only at the end). The low-rank part (W = AB + C)
    is not implemented."""

    name, pipeline, scope = "atmc", "D", "global"
    criterion = "ADMM-optimised magnitude + quantisation"
    description = (
        "ATMC (Gui et al. 2019): adversarial training (half clean, half adversarial loss) with a "
        "global sparse projection after every step and k-bit k-means quantisation by ADMM; the "
        "codebook enforced through fine-tuning; model size recorded in bits"
    )
    search_phase = True
    options = {
        "bits": Whole(8, 2, 16, also=(0,)),  # 0: sparse only
        "rho": Number(0.1, 0.0, 1e3),  # train_proj_admm_quant.py: rho=0.1
        "admm_interval": Whole(5, 1),  # --quant_interval 5 (batches)
        "clean_weight": Number(0.5, 0.0, 1.0),  # util_trts.py: 0.5 clean + 0.5 adversarial
    }

    def search(self, job, state) -> None:
        from apgrid.trainables.admm import project_global, quantize_kmeans
        from apgrid.trainables.training import make_optimizer

        layers = [m for _, m in pruning.prunable_layers(job.model)]
        bits, rho, every = job.options["bits"], job.options["rho"], job.options["admm_interval"]
        optimizer = make_optimizer(job.model.parameters(), job.search)
        z = [m.weight.detach().clone() for m in layers]
        u = [torch.zeros_like(m.weight) for m in layers]
        if state:
            job.model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            z = [t.to(job.device) for t in state["z"]]
            u = [t.to(job.device) for t in state["u"]]

        def penalty():
            if not bits:
                return 0.0
            return sum(0.5 * rho * (m.weight - zi + ui).pow(2).sum() for m, zi, ui in zip(layers, z, u))

        @torch.no_grad()
        def after_step(batch: int) -> None:
            project_global(layers, job.s.sparsity)
            if bits and batch % every == 0 and batch > 0:
                for i, m in enumerate(layers):
                    support = (m.weight != 0).to(m.weight.dtype)
                    z[i] = quantize_kmeans((m.weight + u[i]) * support, bits)[0]
                    u[i] += m.weight - z[i]

        for epoch in range(state["epoch"] if state else 0, job.search_epochs):
            metrics = job.train(
                optimizer,
                job.search,
                epoch,
                penalty=penalty,
                after_step=after_step,
                clean_weight=job.options["clean_weight"],
            )
            job.report(
                {**metrics, "phase": "search", "epoch": epoch + 1, "done": 0},
                {
                    "model": cpu_state(job.model),
                    "z": [t.cpu() for t in z],
                    "u": [t.cpu() for t in u],
                    "optimizer": optimizer.state_dict(),
                    "epoch": epoch + 1,
                },
            )
        project_global(layers, job.s.sparsity)
        masks = {name: (m.weight != 0).float() for name, m in pruning.prunable_layers(job.model)}
        if bits:  # the model that comes out is the quantised one
            with torch.no_grad():
                for m in layers:
                    m.weight.copy_(quantize_kmeans(m.weight, bits)[0])
        pruning.apply_masks(job.model, masks)

    def finetune_step(self, job):
        """Keep each layer on its codebook through fine-tuning (the levels it left ADMM with)."""
        bits = job.options["bits"]
        if not bits:
            return None
        from apgrid.trainables.admm import snap

        layers = [m for _, m in pruning.prunable_layers(job.model)]
        books = [torch.unique(m.weight_orig.detach() * m.weight_mask) for m in layers]

        @torch.no_grad()
        def after_step(batch: int) -> None:
            for m, book in zip(layers, books):
                m.weight_orig.copy_(snap(m.weight_orig * m.weight_mask, book[book != 0]))

        return after_step

    def finish(self, job) -> int:
        return job.options["bits"] or 32


# -- structured: filters removed --------------------------------------------------------------


class FilterPruning(PruningMethod):
    """Filters removed with torch-pruning (trainables/structured.py), one-shot or in `steps`."""

    pipeline, scope, structured, iterative = "A", "local", True, True
    options = {"steps": Whole(1, 1)}
    importance: ClassVar[str]  # torch-pruning importance: l1, l2, fpgm

    def prune_step(self, job, ratio: float) -> None:
        structured.prune_filters(
            job.model, self.importance, ratio, job.original_filters, job.ds.x_train[:1].to(job.device)
        )


@register
class FilterL1(FilterPruning):
    name, criterion, importance = "filter-l1", "filter L1 norm", "l1"
    description = (
        "structured: remove the filters of smallest L1 norm (Li et al. 2017) with "
        "torch-pruning, one-shot or iterative, fine-tuning after each step"
    )


@register
class FilterL2(FilterPruning):
    name, criterion, importance = "filter-l2", "filter L2 norm", "l2"
    description = "structured: remove the filters of smallest L2 norm, one-shot or iterative"


@register
class FilterGeometricMedian(FilterPruning):
    name, criterion, importance = "filter-gm", "geometric median (FPGM)", "fpgm"
    description = (
        "structured: remove the filters closest to the geometric median of their layer "
        "(He et al. 2019), one-shot or iterative"
    )


@register
class TwinRepChannels(TwinRep, FilterPruning):
    """TwinRep's structured variant (the survey: structured, channels): each conv weight trained as
    v * g with one twin g per output channel, whose weight decay acts as a group penalty and
    drives whole filters to zero; then the filters of smallest L2 norm removed with torch-pruning
    at each layer's share (apgrid's filter pruning is per layer; the paper ranks globally)."""

    name, pipeline, scope, structured = "twinrep-channels", "D", "local", True
    criterion, importance = "filter L2 norm after channel-twin reparametrised training", "l2"
    description = (
        "TwinRep, structured (Li et al. 2023): adversarial training from scratch with a twin per "
        "output channel, then the weakest filters removed and fine-tuning"
    )
