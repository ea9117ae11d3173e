"""The pruning methods: one registry entry each, as Torch-Pruning writes a pruner, one class whose
hooks the prune pipeline (trainables/pipeline.py) calls.

A method states its taxonomy (the survey's: Piras et al. 2024, Sec. 3), its options with their
defaults and checks (trainables/fields.py: the spec's vocabulary), and overrides only the hooks it needs:

    start_search(job, saved)   a trained phase that yields the masks (HYDRA's scores, ADMM, Flying
                          Bird's sparse training), set up afresh or from `saved`, the state its
                          last epoch saved: a Search (base.py) whose hooks PruneJob's one loop
                          calls each epoch; methods with one set `search_phase = True` and get the
                          grid's search recipe
    prune(job)            one-shot masks of an unstructured criterion, before fine-tuning
    prune_step(job, ratio)   iterative methods (`iterative = True`: filter pruning, Sehwag19):
                          prune to `ratio` of the target, `steps` times between fine-tuning epochs
    training_hooks(job)   changes to training in every phase, from the dense model (boundary
                          weights, PwoA's distillation): a TrainingHooks (trainables/training.py)
    finetune_hooks(job)   fine-tuning's hooks, from the pruned model (ATMC's codebook)
    finish(job)           last changes before the model is saved (ATMC's quantisation); returns
                          the bits per stored weight

and flags what it needs: `needs_initial_state` (starts from or rewinds to the initial weights),
`needs_validation` (reads the validation split while it trains), `finetunes = False` (no
fine-tuning phase).

One module per family holds its methods beside their maths (magnitude criteria, importance scores,
ADMM, dynamic sparsity, twins, saliency, filters); base.py the base class and the registry.
Adding a method is one class in its family's module, decorated with @register (or a new module
here: every module of this package is imported, none is listed), and a test of the property its
paper states; the spec, `apgrid list methods`, the pipeline, model cards and MLflow tags all read
the registry.
"""

import importlib
import pkgutil

from apgrid.trainables.methods.base import PRUNING_METHODS, PruningMethod, Search, method, register

__all__ = ["PRUNING_METHODS", "PruningMethod", "Search", "method", "methods_table", "register"]

# The registry's order is the one `apgrid list methods` and the docs' table show: baselines first,
# then the survey's families; a module not named here is imported (and listed) after them.
_SHOWN_FIRST = ("magnitude", "scores", "saliency", "admm", "dynamic", "twins", "filters")


def _shown(name: str) -> tuple[int, str]:
    return (_SHOWN_FIRST.index(name) if name in _SHOWN_FIRST else len(_SHOWN_FIRST), name)


for _name in sorted((m.name for m in pkgutil.iter_modules(__path__)), key=_shown):
    importlib.import_module(f"{__name__}.{_name}")  # each family module registers its methods


def methods_table() -> str:
    """The methods table of docs/design.md, from the registry (`apgrid list methods --markdown`)."""
    head = (
        "method",
        "pipeline",
        "structured",
        "scope",
        "criterion",
        "implemented from the paper",
        "not implemented",
    )
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for m in PRUNING_METHODS.values():
        cells = (f"`{m.name}`", m.pipeline, "yes" if m.structured else "no", m.scope, m.criterion)
        lines.append("| " + " | ".join((*cells, m.implemented, m.omitted or "—")) + " |")
    return "\n".join(lines)
