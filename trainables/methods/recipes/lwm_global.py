"""lwm-global: its authors' recipe, a source per value (trainables/recipes.py)."""

from apgrid.trainables.recipes import GRID_FINETUNE, GRID_PARENT, AuthorsRecipe, Fact, left_open
from apgrid.trainables.recipes import Cited as C

_WHY = (
    "open: a baseline; apgrid's default (grid/spec.py DenseSpec.recipe / PruneSpec.finetune). The survey "
    "(Piras et al. 2024, Table 8: LWM with LAMP's global strategy) does not state its training settings in the "
    "material read here, and pralab/AdversarialPruningBenchmark holds no training code"
)


RECIPE = AuthorsRecipe(
    reference="Global least-weight-magnitude pruning (a baseline; no authors' recipe)",
    parent=left_open(_WHY, GRID_PARENT),
    search={},
    finetune=left_open(_WHY, GRID_FINETUNE),
    method={
        "layers": Fact(C("conv + linear, all", _WHY), apgrid="conv + linear, all"),
        "selection": Fact(
            C("one |w| threshold across all conv and linear weights, one shot", _WHY),
            apgrid="one |w| threshold across all conv and linear weights, one shot",
        ),
    },
)
