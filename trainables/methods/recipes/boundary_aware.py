"""boundary-aware: its authors' recipe, a source per value (trainables/recipes.py)."""

from apgrid.trainables.recipes import GRID_FINETUNE, GRID_PARENT, AuthorsRecipe, Fact, left_open
from apgrid.trainables.recipes import Cited as C

_SRC = "apgrid (no published recipe)"
_WHY = f"open: {_SRC}; the grid's recipe (grid/spec.py DenseSpec.recipe / PruneSpec.finetune defaults)"


RECIPE = AuthorsRecipe(
    reference="apgrid's boundary-aware fine-tuning (trainables/boundary.py; the future work of Piras et al. 2023, "
    "'Adversarial pruning: on thin ice', Sec. 6); no published recipe",
    parent=left_open(_WHY, GRID_PARENT),
    search={},
    finetune=left_open(_WHY, GRID_FINETUNE),
    method={
        "layers": Fact(
            C("conv + linear, all", f"{_SRC}: trainables/pruning.py prunable_layers"),
            apgrid="conv + linear, all",
        ),
        "selection": Fact(
            C(
                "one |w| threshold across all conv and linear weights, one shot",
                f"{_SRC}: trainables/methods.py BoundaryAware(GlobalMagnitude)",
            ),
            apgrid="one |w| threshold across all conv and linear weights, one shot",
        ),
        "loss": Fact(
            C(
                "per-sample adversarial loss x w_i, w_i = 1 + alpha exp(-|d_i| / eps) normalised to mean 1, d_i the "
                "dense model's linearised boundary distance; alpha 2",
                f"{_SRC}: trainables/boundary.py boundary_weights, linearized_distance; methods.py options alpha 2.0",
            ),
            apgrid="per-sample adversarial loss x w_i, w_i = 1 + alpha exp(-|d_i| / eps) normalised to mean 1, d_i "
            "the dense model's linearised boundary distance; alpha 2",
        ),
    },
)
