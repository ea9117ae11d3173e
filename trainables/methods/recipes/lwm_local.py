"""lwm-local: its authors' recipe, a source per value (trainables/recipes.py)."""

from apgrid.trainables.methods.recipes.hydra import phase
from apgrid.trainables.recipes import AuthorsRecipe, Fact
from apgrid.trainables.recipes import Cited as C

# The least-weight-magnitude baseline as HYDRA's authors run it (their LWM comparison): the TRADES parent
# pruned one-shot per layer and fine-tuned with the HYDRA fine-tuning recipe.
_R = "inspire-group/hydra"
_CFG = f"{_R} configs/configs.yml"
_LWM = (
    f"{_R} README.md 'Least weight magnitude (LWM) based pruning' / get_compact_net_adv_train.sh 'weight base "
    "pruning': train.py --exp-mode finetune --scaled-score-init --source-net <pretrain checkpoint> --lr 0.01"
)
_SAVE = (
    f"{_R} utils/logging.py save_checkpoint: checkpoint.pth.tar (last) and model_best.pth.tar (best PGD test "
    "accuracy)"
)


RECIPE = AuthorsRecipe(
    reference=(
        "Layer-wise least-weight-magnitude pruning as the HYDRA authors' baseline (Sehwag et al. 2020, Sec. 4, "
        f"LWM); code: {_R} (README 'Least weight magnitude (LWM) based pruning')"
    ),
    parent=phase(
        "trades",
        100,
        0.1,
        f"{_CFG} epochs 100",
        f"{_CFG} lr 0.1",
        C(
            "last",
            f"{_SAVE}; get_compact_net_adv_train.sh prunes pretrain/latest_exp/checkpoint/checkpoint.pth.tar",
        ),
    ),
    search={},
    finetune=phase(
        "trades",
        100,
        0.01,
        f"{_CFG} epochs 100 (the LWM command sets none)",
        _LWM,
        C("last", f"open: {_SAVE}; which one the paper reports is not stated"),
    ),
    method={
        "layers": Fact(
            C("conv + linear, all", f"{_R} models/layers.py SubnetConv / SubnetLinear in every layer"),
            apgrid="conv + linear, all",
        ),
        "selection": Fact(
            C(
                "per-layer smallest |w|, one shot, mask fixed through fine-tuning",
                f"{_LWM}: scores = sqrt(6/fan_in) w / max|w| (utils/model.py initialize_scaled_score) and frozen in "
                "finetune mode, so GetSubnet keeps each layer's largest |w|",
            ),
            apgrid="per-layer smallest |w|, one shot, mask fixed through fine-tuning",
        ),
    },
)
