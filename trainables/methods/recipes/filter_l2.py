"""filter-l2: its authors' recipe, a source per value (trainables/recipes.py)."""

from apgrid.trainables.methods.recipes import filter_l1
from apgrid.trainables.recipes import AuthorsRecipe

_L1 = filter_l1

RECIPE = AuthorsRecipe(
    reference=(
        "Vora et al. 2023 (arXiv 2308.08160), Benchmarking Adversarial Robustness of Compressed Deep Learning "
        "Models (no public code found; NNCF filter_pruning with L2 importance, NNCF's default filter_importance)"
    ),
    parent=_L1.PARENT,
    search={},
    finetune=_L1.FINETUNE,
    method=_L1.method(
        "L2 norm",
        "L2 norm (MagnitudeImportance(p=2, group_reduction='first', normalizer=None): "
        "the conv's own filter, not Torch-Pruning's default group mean)",
    ),
)
