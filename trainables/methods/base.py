"""The base class of every pruning method, its options, and the registry the spec, the pipeline,
`apgrid list methods`, model cards and MLflow tags read (the overview: trainables/methods/__init__.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch

from apgrid.trainables.fields import check_keys
from apgrid.trainables.recipes import AuthorsRecipe
from apgrid.trainables.training import LayeredHooks, Recipe, TrainingHooks, make_optimizer

if TYPE_CHECKING:  # the pipeline imports the registry
    from apgrid.trainables.pipeline import PruneJob

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
    # True: the fine-tuning phase defaults to the parent's recipe, not the grid's fine-tuning one
    # (Li20 trains its rewound ticket on the dense schedule; grid/spec.py _method)
    finetunes_like_parent: ClassVar[bool] = False
    # True: the search keeps its best epoch by validation PGD accuracy when its recipe says
    # `select: best` and there is a validation split (Flying Bird: the search is its whole training)
    selects_in_search: ClassVar[bool] = False
    needs_validation: ClassVar[bool] = False  # reads the validation split while it trains
    iterative: ClassVar[bool] = False  # prunes in `steps` between fine-tuning epochs (prune_step)
    needs_initial_state: ClassVar[bool] = False  # rewinds to / starts from the initial weights
    recipe: ClassVar[AuthorsRecipe | None] = None  # its authors' recipe, cited (methods/recipes/)
    implemented: ClassVar[str] = ""  # what of its paper and code apgrid implements (the docs' table)
    omitted: ClassVar[str] = ""  # and what it does not
    # per phase, what the method does beyond its Recipe, keyed as a recipe's phase facts (R-ADMM's
    # search: its ADMM learning-rate cycle, not the cosine schedule); a search keeps its last epoch
    trains: ClassVar[dict[str, dict[str, Any]]] = {"search": {"select": "last"}}

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
        """The options with defaults filled in; raises FieldError naming the field."""
        check_keys(given, self.options, f"{where}.")
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

    def snapshot(self) -> dict:
        """What restore() needs to return the search to this epoch (the best one, for selection)."""
        return {"model": {k: v.detach().cpu().clone() for k, v in self.job.model.state_dict().items()}}

    def restore(self, snapshot: dict) -> None:
        """Back to the epoch snapshot() took, before finish()."""
        self.job.model.load_state_dict(snapshot["model"])

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
