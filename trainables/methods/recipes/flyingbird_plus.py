"""flyingbird+: its authors' recipe, a source per value (trainables/recipes.py)."""

from apgrid.trainables.methods.recipes import flyingbird
from apgrid.trainables.recipes import AuthorsRecipe, Fact
from apgrid.trainables.recipes import Cited as C

_FB = flyingbird
_R = "VITA-Group/Sparsity-Win-Robust-Generalization"
_M = f"{_R} main_adv.py"
_CORE = f"{_R} sparselearning/core.py"

RECIPE = AuthorsRecipe(
    reference=(
        "Chen, Zhang et al. 2022, Sparsity Winning Twice (ICLR 2022), Flying Bird+; code: "
        f"{_R} (main_adv.py --density 0.2 --dynamic_fre --fbp, scripts/fbp.sh)"
    ),
    parent={},
    search=_FB.SEARCH,
    finetune={},
    method={
        **_FB.METHOD,
        "loss": Fact(
            C(
                "PGD CE; once an epoch the validation PGD-20 loss and (train robust acc - val robust acc) are "
                "recorded for the triggers",
                f"{_M} test_adv(val_loader) -> mask.update_loss_info(val_loss), update_train_val_diff(train_acc, val_ra)",
            ),
            apgrid="PGD CE; once an epoch the validation PGD-20 loss and (train robust acc - val robust acc) are "
            "recorded for the triggers",
        ),
        "other": Fact(
            C(
                "from epoch 100 (--dynamic_epoch 100) of 200: drop 0.4 x rate more (--prune_ratio 0.4) when the "
                "gap rose in >= 0.5 of the last 4 epoch steps, regrow 1.05 x (--growth_ratio 0.05) when the val "
                "loss did not fall in >= 0.5 of them (--epoch_range 4, --update_threshold 0.5); the released code "
                "needs args.dynamic_sparse, undefined in main_adv.py",
                f"{_CORE} get_dst_ratio, dst_prune, dst_growth, magnitude_death (dst_remove), random_growth "
                "(dst_total_regrowth)",
            ),
            apgrid="from half the epochs: drop 0.4 x rate more when the gap rose in >= 0.5 of the last 4 epoch "
            "steps, regrow 1.05 x when the val loss did not fall in >= 0.5 of them; exact regrowth count",
        ),
    },
)
