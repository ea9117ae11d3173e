"""lwm-local: its authors' recipe, a source per value (trainables/recipes.py)."""

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
_ATK = f"{_CFG} epsilon 0.031, num_steps 10, step_size 0.0078; {_R} utils/adv.py trades_loss"
_TRADES = (
    f"{_R} trainer/adv.py train(): trades_loss for --trainer adv; survey taxonomy.json "
    "HYDRA_Sehwag2020Hydra 'Pretraining: AT TRADES' (the benchmark's LWM compares against these parents)"
)
_OPT = f"{_R} utils/schedules.py get_optimizer: SGD; {_CFG} momentum 0.9, wd 1e-4, batch_size 128"
_COS = f"{_R} utils/schedules.py cosine_schedule, per epoch, no warmup ({_CFG} lr_schedule cosine)"
_AUG = f"{_R} data/cifar.py tr_train RandomCrop(32, padding=4), RandomHorizontalFlip"
_SAVE = (
    f"{_R} utils/logging.py save_checkpoint: checkpoint.pth.tar (last) and model_best.pth.tar (best PGD test "
    "accuracy)"
)


def _phase(epochs, lr, epochs_src, lr_src, select):
    return {
        "trainer": C("trades", _TRADES),
        "epochs": C(epochs, epochs_src),
        "lr": C(lr, lr_src),
        "momentum": C(0.9, _OPT),
        "weight_decay": C(1e-4, _OPT),
        "batch_size": C(128, _OPT),
        "pgd_steps": C(10, _ATK),
        "step_size": C(0.0078, _ATK),
        "beta": C(6.0, f"{_CFG} beta 6.0"),
        "eps": C(0.031, _ATK),
        "random_start": C(False, f"{_R} utils/adv.py trades_loss: x + 0.001 N(0, I)"),
        "attack_mode": C("eval", f"{_R} utils/adv.py trades_loss: model.eval() while crafting"),
        "optimizer": C("sgd", f"{_CFG} optimizer sgd"),
        "schedule": C("cosine", _COS),
        "milestones": C((), _COS),
        "select": select,
        "augment": C("crop-flip", _AUG),
    }


RECIPE = AuthorsRecipe(
    reference=(
        "Layer-wise least-weight-magnitude pruning as the HYDRA authors' baseline (Sehwag et al. 2020, Sec. 4, "
        f"LWM); code: {_R} (README 'Least weight magnitude (LWM) based pruning')"
    ),
    parent=_phase(
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
    finetune=_phase(
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
