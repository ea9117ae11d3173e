"""sehwag19: its authors' recipe, a source per value (trainables/recipes.py)."""

from apgrid.trainables.recipes import GRID_FINETUNE, GRID_PARENT, AuthorsRecipe, Fact, left_open
from apgrid.trainables.recipes import Cited as C

_TAX = "survey taxonomy.json Sehwag19_Sehwag2019Towards"
_WHY = (
    "open: no code of the authors' found (searched code and pages for arXiv 1906.06110) and the paper's "
    "settings were not readable here; apgrid's default (grid/spec.py)"
)


RECIPE = AuthorsRecipe(
    reference="Sehwag et al. 2019, Towards Compact and Robust Deep Neural Networks (arXiv 1906.06110); no code found",
    parent=left_open(
        _WHY,
        GRID_PARENT,
        trainer=C("pgd", f"{_TAX}: 'A: Pretraining: AT PGD'"),
    ),
    search={},
    finetune=left_open(
        _WHY,
        GRID_FINETUNE,
        trainer=C("pgd", f"{_TAX}: 'A: Finetuning: AT PGD'"),
    ),
    method={
        "selection": Fact(
            C(
                "global |w| (one threshold across layers), iterative with adversarial fine-tuning between steps",
                f"{_TAX}: 'Pruning locality: Global Pruning (G)', 'criterion: LWM', 'Iterative (IT)'",
            ),
            apgrid=(
                "global |w| (one threshold across layers), iterative with adversarial fine-tuning between "
                "steps"
            ),
        ),
        "other": Fact(
            C(
                "unstructured and filter variants",
                f"{_TAX}: 'Pruning structure: Unstructured (US), Structured (S) filters'",
            ),
            apgrid="unstructured and filter variants",
        ),
    },
)
