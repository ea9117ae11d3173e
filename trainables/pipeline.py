"""The prune stage of one model as a resumable sequence of epochs, without Ray or MLflow.

[mask search] -> masks or removed filters -> adversarial fine-tuning. One epoch counter runs over
both phases: epochs [0, S) are the search phase (HYDRA's scores, the ADMM phase of R-ADMM and
ATMC), epochs [S, S + F) fine-tune the pruned weights. After every epoch `report(metrics, state)`
receives a state from which `run(state)` continues exactly where it stopped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from apgrid.trainables import pruning, structured
from apgrid.trainables.admm import model_size_bits
from apgrid.trainables.data import Dataset
from apgrid.trainables.methods import method as pruning_method
from apgrid.trainables.models import fit_to_state, parameter_count
from apgrid.trainables.training import Recipe, accuracy, make_optimizer, train_epoch


@dataclass(frozen=True)
class PruneSettings:
    method: str
    sparsity: float
    seed: int
    eps: float
    norm: str
    finetune: Recipe
    search: Recipe | None = None   # required by methods with a search phase
    options: dict = field(default_factory=dict)


def _ignore(*args):
    return None


class PruneJob:
    """Prunes `model` (holding the dense weights, on `device`) as `settings` say, calling the
    method's hooks (trainables/methods.py)."""

    def __init__(self, settings: PruneSettings, model: torch.nn.Module, ds: Dataset, device,
                 report=_ignore, before_epoch=_ignore, on_finish=_ignore):
        self.method = pruning_method(settings.method)
        if self.method.search_phase and settings.search is None:
            raise ValueError(f"{settings.method}: needs a search recipe")
        self.s, self.model, self.ds, self.device = settings, model, ds, device
        self.report, self.before_epoch, self.on_finish = report, before_epoch, on_finish
        self.options = {**self.method.defaults(), **settings.options}
        self.finetune = settings.finetune
        self.search = settings.search if self.method.search_phase else None
        self.search_epochs = self.search.epochs if self.search else 0
        self.total = self.search_epochs + self.finetune.epochs
        self.dense_count = pruning.prunable_weight_count(model)
        self.original_filters = structured.filter_counts(model)
        self.sample_weights = self.method.sample_weights(self)  # from the dense model

    def train(self, optimizer, recipe, epoch, offset=0, **kwargs) -> dict:
        self.before_epoch(epoch)
        return train_epoch(self.model, optimizer, self.ds.x_train, self.ds.y_train, recipe=recipe,
                           eps=self.s.eps, norm=self.s.norm, seed=self.s.seed,
                           epoch=epoch - offset, device=self.device, **kwargs)

    def run(self, state: dict | None = None) -> dict:
        """Run (or continue from `state`) to the end; returns the final metrics."""
        if state is not None and "masks" in state:  # resuming fine-tuning
            fit_to_state(self.model, state["model"])
            self.model.load_state_dict(state["model"])
            self.model.to(self.device)
            pruning.apply_masks(self.model, state["masks"])
        elif self.search:
            self.method.search(self, state)
            state = None
        elif not self.is_structured:
            self.method.prune(self)
        return self.finetune_phase(state)

    @property
    def is_structured(self) -> bool:
        return self.method.structured

    # -- fine-tuning -------------------------------------------------------------------------

    def prune_filters_until(self, finetune_epoch: int, done_steps: int) -> int:
        """Apply every structured pruning step scheduled at or before this fine-tuning epoch."""
        steps = self.options.get("steps", 1)
        ratios = structured.iterative_ratios(self.s.sparsity, steps)
        due = structured.step_epochs(self.finetune.epochs, steps)
        while done_steps < steps and due[done_steps] <= finetune_epoch:
            self.method.prune_filters(self, ratios[done_steps])
            done_steps += 1
        return done_steps

    def optimizer(self):
        return make_optimizer([p for p in self.model.parameters() if p.requires_grad], self.finetune)

    def finetune_phase(self, state: dict | None) -> dict:
        done_steps = state.get("structured_steps", 0) if state else 0
        epoch = state["epoch"] if state else self.search_epochs
        before = done_steps
        if self.is_structured:
            done_steps = self.prune_filters_until(epoch - self.search_epochs, done_steps)
        optimizer = self.optimizer()
        if state is not None and done_steps == before:  # same parameters as when saved
            optimizer.load_state_dict(state["optimizer"])
        metrics = {}
        for epoch in range(epoch, self.total):
            if self.is_structured:
                before = done_steps
                done_steps = self.prune_filters_until(epoch - self.search_epochs, done_steps)
                if done_steps != before:  # new parameters: a fresh optimiser
                    optimizer = self.optimizer()
            metrics = self.train(optimizer, self.finetune, epoch, offset=self.search_epochs,
                                 sample_weights=self.sample_weights)
            metrics["epoch"] = epoch + 1
            last = epoch + 1 == self.total
            if last:
                metrics = self.finish(metrics)
            else:
                metrics["test_clean_acc"] = self.test_accuracy()
            self.report({**metrics, "phase": "finetune", "done": int(last)},
                        {"model": pruning.plain_state_dict(self.model),
                         "masks": pruning.masks_of(self.model), "optimizer": optimizer.state_dict(),
                         "epoch": epoch + 1, "structured_steps": done_steps})
        if self.finetune.epochs == 0:
            metrics = self.finish({})
            self.report({**metrics, "done": 1}, {})
        return metrics

    def test_accuracy(self) -> float:
        return accuracy(self.model, self.ds.x_test, self.ds.y_test, self.device)

    def finish(self, metrics: dict) -> dict:
        """ATMC's final quantisation, the model's costs, then `on_finish` (which saves it)."""
        bits = self.method.finish(self)
        metrics = {**metrics, "test_clean_acc": self.test_accuracy(),
                   "measured_sparsity": pruning.measured_sparsity(self.model, self.dense_count),
                   "model_size_bits": model_size_bits(self.model, bits),
                   "params": parameter_count(self.model),
                   "nonzero_params": pruning.nonzero_count(self.model)}
        extra = {"measured_sparsity": metrics["measured_sparsity"],
                 "params": metrics["params"], "nonzero_params": metrics["nonzero_params"],
                 "model_size_bits": metrics["model_size_bits"], "options": self.options,
                 "filters": structured.filter_counts(self.model) if self.is_structured else None}
        self.on_finish(self.model, metrics, extra)
        return metrics
