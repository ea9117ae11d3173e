"""The base class of every pruning method, its options, and the registry the spec, the pipeline,
`apgrid list methods`, model cards and MLflow tags read (the overview: trainables/methods/__init__.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from apgrid.errors import show_value as _show
from apgrid.trainables.training import LayeredHooks, Recipe, TrainingHooks, make_optimizer

if TYPE_CHECKING:  # the pipeline imports the registry
    from apgrid.trainables.pipeline import PruneJob

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

    def start_search(self, job: PruneJob, saved: dict | None) -> Search:
        """The search phase set up afresh, or from the state its last epoch saved."""
        raise NotImplementedError(f"{self.name} has no search phase")

    def prune(self, job: PruneJob) -> None:
        """One-shot masks of an unstructured criterion."""

    def prune_step(self, job: PruneJob, ratio: float) -> None:
        raise NotImplementedError(f"{self.name} is not iterative")

    def training_hooks(self, job: PruneJob) -> TrainingHooks:
        """The method's changes to training in every phase, taken from the dense model when the
        job starts (boundary weights, PwoA's teacher)."""
        return TrainingHooks()

    def finetune_hooks(self, job: PruneJob) -> TrainingHooks:
        """Fine-tuning's hooks, taken from the pruned model (ATMC's codebook)."""
        return job.hooks

    def finish(self, job: PruneJob) -> int:
        return 32


class Search(LayeredHooks):
    """One run of a method's search phase, which PruneJob's loop drives (trainables/pipeline.py):
    its optimiser over `params`, the training hooks of each epoch laid over the job's, the work
    and metrics an epoch adds, the state a resumed search needs, and the masks at the end. The
    job restores the optimiser's state, the epoch and the phase; a subclass restores the rest
    from `saved` before calling this constructor."""

    def __init__(self, job: PruneJob, params, recipe: Recipe | None = None):
        super().__init__(job.hooks)
        self.job = job
        self.recipe = recipe or job.search
        self.optimizer = make_optimizer(params, self.recipe)

    def begin(self) -> None:
        """Once the optimiser holds its saved state, before the first epoch (Flying Bird masks it)."""

    def begin_epoch(self, epoch: int) -> None:
        """Before an epoch's training: its schedule (HARP's gamma, Flying Bird's update interval)."""

    def end_epoch(self, epoch: int, metrics: dict) -> None:
        """After an epoch's training: the method's own work and metrics (ADMM's Z/U update)."""

    def stopped(self) -> bool:
        """True ends the search before its last epoch (Robust Bird's early-bird mask found)."""
        return False

    def state(self) -> dict:
        """What a resumed search needs besides the optimiser, the epoch and the phase."""
        return {}

    def finish(self) -> None:
        """The search's masks on the model, after its last epoch."""


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
