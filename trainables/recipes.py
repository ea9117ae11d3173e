"""A pruning method's recipe as its authors run it: data with a source per value.

Each registry entry (trainables/methods) carries an `AuthorsRecipe`: per phase (the dense parent's
training, the mask search, the fine-tuning) the values a `training.Recipe` holds, plus the facts a
Recipe cannot hold (optimiser, learning-rate schedule, training ε, attack mode, which layers,
initialisation, batch norm, which epoch is kept). Every value is `Cited`: the file and function of
the authors' code, or the paper's section, it comes from; a value the authors leave open says so
("open: ...").

A grid takes each method's recipe by default; whatever the spec sets otherwise is a `Deviation`,
listed by `apgrid launch --dry-run`, in the model card, as an MLflow tag and in the report.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from apgrid.trainables.training import Recipe

PHASES = ("parent", "search", "finetune")
# what apgrid's trainer does for the phase facts a Recipe has no field for
APGRID_PHASE_FACTS = {"optimizer": "sgd"}
RECIPE_FIELDS = tuple(f.name for f in fields(Recipe))
CHOICES = {f.name: f.metadata["choices"] for f in fields(Recipe) if "choices" in f.metadata}
PHASE_KEYS = RECIPE_FIELDS + ("eps", "random_start") + tuple(APGRID_PHASE_FACTS)
# method-level facts: what apgrid does for them is stated beside the authors' value
METHOD_KEYS = ("loss", "layers", "weight_init", "score_init", "batch_norm", "selection", "other")


@dataclass(frozen=True)
class Cited:
    """One value of an authors' recipe and where it comes from."""

    value: Any
    source: str  # "owner/repo path: function or flag", "paper Sec. N", or "open: why"

    @property
    def is_open(self) -> bool:
        return self.source.startswith("open")


@dataclass(frozen=True)
class Fact:
    """A method-level fact: the authors' value, cited, and what apgrid does."""

    authors: Cited
    apgrid: Any

    @property
    def differs(self) -> bool:
        return not self.authors.is_open and self.authors.value != self.apgrid


@dataclass(frozen=True)
class AuthorsRecipe:
    reference: str  # the paper and the code the values are read from
    parent: Mapping[str, Cited] = field(default_factory=dict)  # how the dense model it prunes is trained
    search: Mapping[str, Cited] = field(default_factory=dict)  # the mask search (empty: none)
    finetune: Mapping[str, Cited] = field(default_factory=dict)  # after pruning (empty: none)
    method: Mapping[str, Fact] = field(default_factory=dict)

    def __post_init__(self):
        for phase in PHASES:
            unknown = set(getattr(self, phase)) - set(PHASE_KEYS)
            if unknown:
                raise ValueError(f"{phase}: unknown recipe keys {sorted(unknown)}")
        if set(self.method) - set(METHOD_KEYS):
            raise ValueError(f"method: unknown facts {sorted(set(self.method) - set(METHOD_KEYS))}")

    def phase(self, name: str) -> Mapping[str, Cited]:
        return getattr(self, name)

    def recipe_values(self, phase: str) -> dict:
        """The phase's values a training.Recipe holds (what a grid takes by default); a choice
        apgrid does not have (R-ADMM's ADMM
        learning-rate cycle) is left to the grid and listed as a deviation."""
        values = {k: c.value for k, c in self.phase(phase).items() if k in RECIPE_FIELDS and not c.is_open}
        return {k: v for k, v in values.items() if v in CHOICES.get(k, (v,))}


# What apgrid trains a phase with when neither the authors nor the spec say (grid/spec.py's
# defaults), shown for the values a recipe leaves open; never taken from here
GRID_PARENT = {
    "trainer": "pgd",
    "epochs": 10,
    "lr": 0.05,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "batch_size": 128,
    "pgd_steps": 7,
    "select": "last",
}
GRID_FINETUNE = {**GRID_PARENT, "epochs": 5, "lr": 0.01}


def left_open(why: str, grid: Mapping, **known: Cited) -> dict[str, Cited]:
    """A phase whose values the authors leave open (`why` starts with "open"), apgrid's shown, with
    the values they do state (`known`)."""
    return {**{key: Cited(value, why) for key, value in grid.items()}, **known}


@dataclass(frozen=True)
class Deviation:
    """Where a grid trains a method unlike its authors."""

    phase: str  # parent | search | finetune | method
    key: str
    grid: Any
    authors: Any
    source: str

    @property
    def where(self) -> str:
        """The field as a spec's `because` names it: finetune.epochs, or a method fact (layers)."""
        return self.key if self.phase == "method" else f"{self.phase}.{self.key}"

    def __str__(self) -> str:
        return f"{self.where} {show(self.grid)} — authors {show(self.authors)} ({self.source})"


def reason_for(deviation: Deviation, *because: Mapping[str, str]) -> str | None:
    """Why a grid departs there: the first mapping (the method's, then the grid's) with a pattern
    matching the deviation's field, an exact name before a wildcard; None if unexplained."""
    for reasons in because:
        if deviation.where in reasons:
            return reasons[deviation.where]
        for pattern, reason in reasons.items():
            if fnmatch.fnmatchcase(deviation.where, pattern):
                return reason
    return None


def show(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(show(v) for v in value) + "]"
    return str(value)


def _same(grid, authors) -> bool:
    if isinstance(grid, float) or isinstance(authors, float):
        try:
            return abs(float(grid) - float(authors)) <= 1e-6 * max(1.0, abs(float(authors)))
        except (TypeError, ValueError):
            return False
    if isinstance(grid, (list, tuple)) and isinstance(authors, (list, tuple)):
        return tuple(grid) == tuple(authors)
    return grid == authors


def phase_values(recipe: Recipe, eps: float, trains: Mapping | None = None) -> dict:
    """What apgrid does in a phase trained with `recipe` at the threat model's `eps`, keyed as an
    AuthorsRecipe phase is; `trains`: what the method does there beyond its Recipe (R-ADMM's ADMM
    learning-rate cycle in place of the cosine schedule, no epoch selection in a search)."""
    values = {f: getattr(recipe, f) for f in RECIPE_FIELDS}
    step = recipe.step_size
    if step is None and recipe.trainer in ("pgd", "trades", "mart", "pgd+clean/2"):
        step = 2.5 * eps / recipe.pgd_steps
    elif step is None and recipe.trainer == "fgsm-rs":
        step = 1.25 * eps
    elif step is None and recipe.trainer == "fgsm":
        step = eps
    values["step_size"] = step
    return {
        **values,
        **APGRID_PHASE_FACTS,
        "eps": eps,
        "random_start": recipe.trainer in ("pgd", "fgsm-rs"),
        **(trains or {}),
    }


def deviations(
    authors: AuthorsRecipe, phases: Mapping[str, Recipe | None], eps: float, trains: Mapping | None = None
) -> list[Deviation]:
    """Every value in which the grid's `phases` (parent / search / finetune recipes; None for a
    phase the method does not run) and the method's facts depart from its authors' recipe;
    `trains`: per phase, what the method does beyond its Recipe (PruningMethod.trains)."""
    out = []
    for phase in PHASES:
        recipe = phases.get(phase)
        if recipe is None:
            continue
        ours = phase_values(recipe, eps, (trains or {}).get(phase))
        for key, cited in authors.phase(phase).items():
            if cited.is_open or key in ("augment",):  # augmentation follows the dataset
                continue
            if not _same(ours[key], cited.value):
                out.append(Deviation(phase, key, ours[key], cited.value, cited.source))
    for key, fact in authors.method.items():
        if fact.differs:
            out.append(Deviation("method", key, fact.apgrid, fact.authors.value, fact.authors.source))
    return out


def describe(authors: AuthorsRecipe) -> list[str]:
    """The recipe as `apgrid list methods NAME` prints it: one value per line with its source."""
    lines = [f"reference: {authors.reference}"]
    for phase in PHASES:
        values = authors.phase(phase)
        if not values:
            lines.append(f"{phase}: none")
            continue
        lines.append(f"{phase}:")
        lines += [f"  {k:<13} {show(c.value):<22} {c.source}" for k, c in values.items()]
    if authors.method:
        lines.append("method:")
        for key, fact in authors.method.items():
            note = "" if not fact.differs else f"   [apgrid: {show(fact.apgrid)}]"
            lines.append(f"  {key:<13} {show(fact.authors.value):<22} {fact.authors.source}{note}")
    return lines
