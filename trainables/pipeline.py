"""The dense and prune stages of one model as resumable sequences of epochs, without Ray or MLflow.

DenseJob: adversarial training of the dense model. PruneJob: [mask search] -> masks or removed
filters -> adversarial fine-tuning; one epoch counter runs over both phases: epochs [0, S) are the
search phase (HYDRA's scores, the ADMM phase of R-ADMM and ATMC), epochs [S, S + F) fine-tune the
pruned weights. The search is one loop here over the method's Search hooks (trainables/methods/).
After every epoch `report(metrics, state)` receives a state, naming its phase ("search" or
"finetune"), from which `run(state)` continues exactly where it stopped; `on_finish(model, metrics,
extra)` saves the model.

With a validation split (dataset.validation) every epoch is scored by PGD-10 accuracy on it:
`select: best` keeps the best epoch's weights (the references' habit, e.g. HYDRA's), and a
collapse below a fifth of the best score is reported as catastrophic overfitting (Wong et al.
2020, Sec. 5). The test set is never used to choose anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from apgrid.trainables import masks
from apgrid.trainables.data import Dataset
from apgrid.trainables.methods import method as pruning_method
from apgrid.trainables.models import fit_to_state
from apgrid.trainables.training import (
    Recipe,
    TrainingHooks,
    accuracy,
    make_optimizer,
    robust_accuracy,
    train_epoch,
)

COLLAPSE = 0.2  # validation PGD accuracy below this share of its best: catastrophic overfitting


class Selection:
    """The epochs' validation scores: the best epoch's weights (for select: best) and the first
    epoch of a collapse. Part of every epoch checkpoint, so a resumed job selects the same."""

    def __init__(self, state: dict | None = None):
        state = state or {}
        self.best_score = state.get("best_score", -1.0)
        self.best_epoch = state.get("best_epoch", 0)
        self.best_weights = state.get("best_weights")
        self.overfit_epoch = state.get("overfit_epoch")

    def state(self) -> dict:
        return {
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "best_weights": self.best_weights,
            "overfit_epoch": self.overfit_epoch,
        }

    def update(self, epoch: int, score: float, model, keep: bool) -> bool:
        """Record an epoch's score; True when it is the first collapse."""
        if score > self.best_score:
            self.best_score, self.best_epoch = score, epoch
            if keep:
                self.best_weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            return False
        collapsed = self.overfit_epoch is None and score < COLLAPSE * self.best_score
        if collapsed:
            self.overfit_epoch = epoch
        return collapsed

    def score(
        self, epoch: int, model, ds: Dataset, eps: float, norm: str, device, keep: bool, steps: int = 10
    ) -> dict:
        """An epoch's validation metrics (none without a validation split) under PGD-`steps`,
        recorded; with `catastrophic_overfitting` 1 at the first collapse."""
        metrics = validation_metrics(model, ds, eps, norm, device, steps)
        if metrics:
            collapsed = self.update(epoch, metrics["val_pgd_acc"], model, keep)
            metrics["catastrophic_overfitting"] = int(collapsed)
        return metrics

    def restore_best(self, model) -> None:
        if self.best_weights is not None:
            model.load_state_dict(self.best_weights)


def validation_metrics(model, ds: Dataset, eps: float, norm: str, device, steps: int = 10) -> dict:
    """Clean and PGD-`steps` accuracy on the validation split (none without one)."""
    if ds.x_val is None:
        return {}
    return {
        "val_clean_acc": accuracy(model, ds.x_val, ds.y_val, device),
        "val_pgd_acc": robust_accuracy(
            model, ds.x_val, ds.y_val, eps=eps, norm=norm, device=device, steps=steps
        ),
    }


def selection_record(recipe: Recipe, selection: Selection, epochs: int) -> dict:
    """What a model card says about the epoch it kept and any collapse."""
    kept = selection.best_epoch if recipe.select == "best" and selection.best_weights is not None else epochs
    return {
        "selected_epoch": kept,
        "select": recipe.select,
        "catastrophic_overfitting_epoch": selection.overfit_epoch,
    }


def iterative_ratios(ratio: float, steps: int) -> list[float]:
    return [ratio * (k + 1) / steps for k in range(steps)]


def step_epochs(finetune_epochs: int, steps: int) -> list[int]:
    """Fine-tuning epoch before which each pruning step happens (all at 0 when there is none)."""
    return [(k * finetune_epochs) // steps for k in range(steps)]


def _ignore(*args):
    return None


class DenseJob:
    """Adversarially trains `model` (freshly initialised, on `device`) with `recipe`."""

    def __init__(
        self,
        recipe: Recipe,
        eps: float,
        norm: str,
        seed: int,
        model: torch.nn.Module,
        ds: Dataset,
        device,
        report=_ignore,
        before_epoch=_ignore,
        on_finish=_ignore,
    ):
        self.recipe, self.eps, self.norm, self.seed = recipe, eps, norm, seed
        self.model, self.ds, self.device = model, ds, device
        self.report, self.before_epoch, self.on_finish = report, before_epoch, on_finish

    def run(self, state: dict | None = None) -> dict:
        optimizer = make_optimizer(self.model.parameters(), self.recipe)
        start = 0
        if state is not None:
            self.model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            start = state["epoch"]
        selection = Selection(state.get("selection") if state else None)
        metrics = {}
        for epoch in range(start, self.recipe.epochs):
            self.before_epoch(epoch)
            metrics = train_epoch(
                self.model,
                optimizer,
                self.ds.x_train,
                self.ds.y_train,
                recipe=self.recipe,
                eps=self.eps,
                norm=self.norm,
                seed=self.seed,
                epoch=epoch,
                device=self.device,
            )
            metrics.update(
                selection.score(
                    epoch + 1,
                    self.model,
                    self.ds,
                    self.eps,
                    self.norm,
                    self.device,
                    keep=self.recipe.select == "best",
                )
            )
            metrics["epoch"] = epoch + 1
            last = epoch + 1 == self.recipe.epochs
            if last:
                checkpoint = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
                if self.recipe.select == "best":
                    selection.restore_best(self.model)
                metrics["test_clean_acc"] = accuracy(self.model, self.ds.x_test, self.ds.y_test, self.device)
                self.on_finish(
                    self.model, metrics, selection_record(self.recipe, selection, self.recipe.epochs)
                )
                state_model = checkpoint
            else:
                if self.ds.x_val is None:  # progress for a grid without a validation split
                    metrics["test_clean_acc"] = accuracy(
                        self.model, self.ds.x_test, self.ds.y_test, self.device
                    )
                state_model = self.model.state_dict()
            self.report(
                {**metrics, "done": int(last)},
                {
                    "model": state_model,
                    "optimizer": optimizer.state_dict(),
                    "epoch": epoch + 1,
                    "selection": selection.state(),
                },
            )
        return metrics


@dataclass(frozen=True)
class PruneSettings:
    method: str
    sparsity: float
    seed: int
    eps: float
    norm: str
    finetune: Recipe
    search: Recipe | None = None  # required by methods with a search phase
    options: dict = field(default_factory=dict)


class PruneJob:
    """Prunes `model` (holding the dense weights, on `device`) as `settings` say, calling the
    method's hooks (trainables/methods/)."""

    def __init__(
        self,
        settings: PruneSettings,
        model: torch.nn.Module,
        ds: Dataset,
        device,
        report=_ignore,
        before_epoch=_ignore,
        on_finish=_ignore,
        initial_state: dict | None = None,
    ):
        """`initial_state`: the dense model's weights at initialisation (before any training),
        for methods that rewind to them or start from them (Li20, RST)."""
        self.method = pruning_method(settings.method)
        if self.method.search_phase and settings.search is None:
            raise ValueError(f"{settings.method}: needs a search recipe")
        self.s, self.model, self.ds, self.device = settings, model, ds, device
        self.report, self.before_epoch, self.on_finish = report, before_epoch, on_finish
        self.options = {**self.method.defaults(), **settings.options}
        self.initial_state = initial_state
        if self.method.needs_initial_state and initial_state is None:
            raise ValueError(f"{settings.method}: needs the dense model's initial weights")
        if self.method.needs_validation and ds.x_val is None:
            raise ValueError(f"{settings.method}: needs a validation split (dataset.validation)")
        # a method without a fine-tuning phase (RST, Flying Bird) trains for 0 fine-tuning epochs
        self.finetune = settings.finetune if self.method.finetunes else replace(settings.finetune, epochs=0)
        self.search = settings.search if self.method.search_phase else None
        self.search_epochs = self.search.epochs if self.search else 0
        self.total = self.search_epochs + self.finetune.epochs
        self.dense_count = masks.prunable_weight_count(model)
        self.original_filters = masks.filter_counts(model)
        self.hooks = self.method.training_hooks(self)  # from the dense model (PwoA's teacher)

    def train(self, optimizer, recipe: Recipe, epoch: int, hooks: TrainingHooks, offset: int = 0) -> dict:
        self.before_epoch(epoch)
        return train_epoch(
            self.model,
            optimizer,
            self.ds.x_train,
            self.ds.y_train,
            recipe=recipe,
            eps=self.s.eps,
            norm=self.s.norm,
            seed=self.s.seed,
            epoch=epoch - offset,
            device=self.device,
            hooks=hooks,
        )

    def run(self, state: dict | None = None) -> dict:
        """Run (or continue from `state`) to the end; returns the final metrics."""
        phase = state.get("phase") if state else None  # every saved state names its phase
        if phase == "finetune":
            fit_to_state(self.model, state["model"])
            self.model.load_state_dict(state["model"])
            self.model.to(self.device)
            masks.apply_masks(self.model, state["masks"])
        else:
            if self.search:
                self.search_phase(state if phase == "search" else None)
            elif not self.method.iterative:
                self.method.prune(self)
            state = None
        return self.finetune_phase(state)

    def search_phase(self, saved: dict | None) -> None:
        """The method's search, epoch by epoch, continued from `saved` (its last epoch's state)."""
        search = self.method.start_search(self, saved)
        if saved:
            search.optimizer.load_state_dict(saved["optimizer"])
        # a method whose search is its whole training keeps its best epoch when its recipe says so
        select = (
            self.method.selects_in_search and search.recipe.select == "best" and self.ds.x_val is not None
        )
        self.search_selection = Selection(saved.get("selection") if saved else None)
        search.begin()
        for epoch in range(saved["epoch"] if saved else 0, self.search_epochs):
            if search.stopped():
                break
            search.begin_epoch(epoch)
            metrics = self.train(search.optimizer, search.recipe, epoch, search)
            search.end_epoch(epoch, metrics)
            if select:
                sel = self.search_selection
                steps = self.options.get("val_pgd_steps", 10)  # the method's selecting attack
                s, at = self.s, epoch + 1
                metrics.update(sel.score(at, self.model, self.ds, s.eps, s.norm, self.device, False, steps))
                if sel.best_epoch == epoch + 1:
                    sel.best_weights = search.snapshot()
            self.report(
                {**metrics, "phase": "search", "epoch": epoch + 1, "done": 0},
                {
                    **search.state(),
                    "optimizer": search.optimizer.state_dict(),
                    "epoch": epoch + 1,
                    "phase": "search",
                    **({"selection": self.search_selection.state()} if select else {}),
                },
            )
        if select and self.search_selection.best_weights is not None:
            search.restore(self.search_selection.best_weights)
        search.finish()

    @property
    def is_structured(self) -> bool:
        return self.method.structured

    # -- fine-tuning -------------------------------------------------------------------------

    def prune_until(self, finetune_epoch: int, done_steps: int) -> int:
        """Apply every pruning step of an iterative method (filters removed, or masks tightened)
        scheduled at or before this fine-tuning epoch."""
        steps = self.options.get("steps", 1)
        ratios = iterative_ratios(self.s.sparsity, steps)
        due = step_epochs(self.finetune.epochs, steps)
        while done_steps < steps and due[done_steps] <= finetune_epoch:
            self.method.prune_step(self, ratios[done_steps])
            done_steps += 1
        return done_steps

    def optimizer(self):
        return make_optimizer([p for p in self.model.parameters() if p.requires_grad], self.finetune)

    def finetune_phase(self, state: dict | None) -> dict:
        done_steps = state.get("structured_steps", 0) if state else 0
        start = state["epoch"] if state else self.search_epochs
        before = done_steps
        if self.method.iterative:
            done_steps = self.prune_until(start - self.search_epochs, done_steps)
        optimizer = self.optimizer()
        if state is not None and done_steps == before:  # same parameters as when saved
            optimizer.load_state_dict(state["optimizer"])
        self.selection = Selection(state.get("selection") if state else None)
        keep = self.finetune.select == "best"
        hooks = self.method.finetune_hooks(self)
        metrics = {}
        for epoch in range(start, self.total):
            if self.method.iterative:
                before = done_steps
                done_steps = self.prune_until(epoch - self.search_epochs, done_steps)
                if done_steps != before:  # new parameters: a fresh optimiser, and only epochs
                    optimizer = self.optimizer()  # after the last step are candidates
                    self.selection = Selection()
            metrics = self.train(optimizer, self.finetune, epoch, hooks, offset=self.search_epochs)
            metrics.update(
                self.selection.score(
                    epoch + 1, self.model, self.ds, self.s.eps, self.s.norm, self.device, keep
                )
            )
            metrics["epoch"] = epoch + 1
            last = epoch + 1 == self.total
            saved = {
                "model": masks.plain_state_dict(self.model),
                "masks": masks.masks_of(self.model),
                "optimizer": optimizer.state_dict(),
                "epoch": epoch + 1,
                "structured_steps": done_steps,
                "selection": self.selection.state(),
                "phase": "finetune",
            }
            if last:
                if keep:
                    self.selection.restore_best(self.model)
                metrics = self.finish(metrics)
            elif self.ds.x_val is None:  # progress for a grid without a validation split
                metrics["test_clean_acc"] = self.test_accuracy()
            self.report({**metrics, "phase": "finetune", "done": int(last)}, saved)
        if self.finetune.epochs == 0:
            metrics = self.finish({})
            self.report({**metrics, "done": 1}, {})
        return metrics

    def test_accuracy(self) -> float:
        return accuracy(self.model, self.ds.x_test, self.ds.y_test, self.device)

    def selection_record(self) -> dict:
        """The kept epoch: the search's when the search is the whole training (Flying Bird)."""
        if self.search is not None and not self.method.finetunes and self.method.selects_in_search:
            return selection_record(self.search, self.search_selection, self.search_epochs)
        return selection_record(self.finetune, getattr(self, "selection", Selection()), self.total)

    def finish(self, metrics: dict) -> dict:
        """ATMC's final quantisation, the model's costs, then `on_finish` (which saves it)."""
        facts = masks.model_facts(self.model, self.dense_count, self.method.finish(self))
        metrics = {**metrics, "test_clean_acc": self.test_accuracy(), **facts}
        extra = {
            **facts,
            "options": self.options,
            "filters": masks.filter_counts(self.model) if self.is_structured else None,
            **self.selection_record(),
        }
        self.on_finish(self.model, metrics, extra)
        return metrics
