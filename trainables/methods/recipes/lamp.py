"""lamp: its authors' recipe, a source per value (trainables/recipes.py)."""

from apgrid.trainables.recipes import GRID_FINETUNE, GRID_PARENT, AuthorsRecipe, Fact, left_open
from apgrid.trainables.recipes import Cited as C

_R = "jaeho-lee/layer-adaptive-sparsity"
_ML = f"{_R} tools/modelloaders.py model_and_opt_loader (vgg16 / resnet18)"
_WHY = (
    "open: LAMP's authors train without adversarial examples (their CIFAR-10 recipe: clean CE, AdamW lr 3e-4, "
    f"batch 100, 50k steps dense / 40k steps after each pruning round, no schedule; {_ML}, tools/train.py); the "
    "adversarial use is the survey's (Piras et al. 2024, Table 8, LWM with LAMP's global strategy), whose training "
    "settings are not stated in the material read here and not in pralab/AdversarialPruningBenchmark; apgrid's "
    "default (grid/spec.py)"
)


RECIPE = AuthorsRecipe(
    reference=f"Lee et al. 2021, Layer-adaptive Sparsity for the Magnitude-based Pruning (ICLR 2021); code: {_R} "
    "(tools/pruners.py prune_weights_lamp, iterate.py)",
    parent=left_open(_WHY, GRID_PARENT),
    search={},
    finetune=left_open(_WHY, GRID_FINETUNE),
    method={
        "layers": Fact(
            C("conv + linear, all", f"{_R} tools/utils.py _is_prunable_module (nn.Linear or nn.Conv2d)"),
            apgrid="conv + linear, all",
        ),
        "selection": Fact(
            C(
                "global top-k of LAMP scores w_u^2 / sum_{v >= u} w_v^2 (per layer, ascending |w|); the per-layer "
                "amounts then pruned by l1_unstructured",
                f"{_R} tools/pruners.py _compute_lamp_amounts, _normalize_scores, prune_weights_l1predefined",
            ),
            apgrid="global top-k of LAMP scores w_u^2 / sum_{v >= u} w_v^2 (per layer, ascending |w|); the per-layer "
            "amounts then pruned by l1_unstructured",
        ),
        "other": Fact(
            C(
                "iterative: 20% of the remaining weights per round, retrained after each round",
                f"{_R} iterate.py (pruner(model, amount_per_it) then trainer, --iter_end 20); {_ML} amount 0.20",
            ),
            apgrid="one shot to the target sparsity, then fine-tuning",
        ),
    },
)
