"""random: its authors' recipe, a source per value (trainables/recipes.py)."""

from apgrid.trainables.recipes import GRID_FINETUNE, GRID_PARENT, AuthorsRecipe, Fact, left_open
from apgrid.trainables.recipes import Cited as C

_WHY = (
    "open: a baseline; apgrid's default (grid/spec.py DenseSpec.recipe / PruneSpec.finetune); no authors' "
    "recipe, and the survey's benchmark (pralab/AdversarialPruningBenchmark) has no random-pruning entry"
)


RECIPE = AuthorsRecipe(
    reference="Random unstructured pruning (a baseline; no authors' recipe)",
    parent=left_open(_WHY, GRID_PARENT),
    search={},
    finetune=left_open(_WHY, GRID_FINETUNE),
    method={
        "layers": Fact(C("conv + linear, all", _WHY), apgrid="conv + linear, all"),
        "selection": Fact(
            C("uniformly random per layer, the same share in every layer, seeded", _WHY),
            apgrid="uniformly random per layer, the same share in every layer, seeded",
        ),
    },
)
