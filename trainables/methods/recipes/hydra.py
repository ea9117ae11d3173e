"""hydra: its authors' recipe, a source per value (trainables/recipes.py)."""

from apgrid.trainables.recipes import AuthorsRecipe, Fact
from apgrid.trainables.recipes import Cited as C

_R = "inspire-group/hydra"
_CFG = f"{_R} configs/configs.yml"
_RM = f"{_R} README.md / get_compact_net_adv_train.sh"
_ATK = f"{_CFG} epsilon 0.031, num_steps 10, step_size 0.0078 (override args.py 8/255, 2/255); {_R} utils/adv.py trades_loss"
_TRADES = (
    f"{_R} trainer/adv.py train(): trades_loss (CE(f(x)) + beta KL) for every --trainer adv phase; "
    "survey taxonomy.json HYDRA_Sehwag2020Hydra: 'Pretraining: AT TRADES', 'Finetuning: AT TRADES'"
)
_START = f"{_R} utils/adv.py trades_loss: x + 0.001 N(0, I), no uniform random start"
_MODE = f"{_R} utils/adv.py trades_loss: model.eval() while crafting, model.train() for the loss"
_OPT = (
    f"{_R} utils/schedules.py get_optimizer: SGD; configs/configs.yml momentum 0.9, wd 1e-4, batch_size 128"
)
_COS = (
    f"{_R} utils/schedules.py cosine_schedule: lr 0.5 (1 + cos((epoch - 1) / epochs pi)) per epoch, "
    f"no warmup ({_CFG} lr_schedule cosine, warmup_epochs 0)"
)
_AUG = f"{_R} data/cifar.py tr_train RandomCrop(32, padding=4), RandomHorizontalFlip"
_SAVE = (
    f"{_R} train.py/utils/logging.py save_checkpoint: checkpoint.pth.tar every epoch (last) and model_best.pth.tar "
    "(best PGD-10 accuracy on the CIFAR-10 TEST set, val_method adv)"
)


def phase(trainer, epochs, lr, epochs_src, lr_src, select):
    """One phase of HYDRA's train.py (its LWM baseline trains the same way, recipes/lwm_local.py)."""
    return {
        "trainer": C(trainer, _TRADES),
        "epochs": C(epochs, epochs_src),
        "lr": C(lr, lr_src),
        "momentum": C(0.9, _OPT),
        "weight_decay": C(1e-4, _OPT),
        "batch_size": C(128, _OPT),
        "pgd_steps": C(10, _ATK),
        "step_size": C(0.0078, _ATK),
        "beta": C(6.0, f"{_CFG} beta 6.0"),
        "eps": C(0.031, _ATK),
        "random_start": C(False, _START),
        "attack_mode": C("eval", _MODE),
        "optimizer": C("sgd", f"{_CFG} optimizer sgd"),
        "schedule": C("cosine", _COS),
        "milestones": C((), _COS),
        "select": select,
        "augment": C("crop-flip", _AUG),
    }


RECIPE = AuthorsRecipe(
    reference=(
        "Sehwag et al. 2020, HYDRA: Pruning Adversarially Robust Neural Networks (NeurIPS 2020); code: "
        f"{_R} (train.py --exp-mode pretrain|prune|finetune, configs/configs.yml, trainer/adv.py, utils/model.py); "
        "CIFAR-10 VGG-16 is models/vgg_cifar.py vgg16_bn (bias-free convs, 2x2 avg pool, 2048-256-256 head: "
        "apgrid's vgg16-hydra)"
    ),
    parent=phase(
        "trades",
        100,
        0.1,
        f"{_CFG} epochs 100 (README pretrain command sets none)",
        f"{_CFG} lr 0.1",
        C(
            "last",
            f"{_SAVE}; the prune stage loads pretrain/latest_exp/checkpoint/checkpoint.pth.tar (last) "
            "in get_compact_net_adv_train.sh",
        ),
    ),
    search=phase(
        "trades",
        20,
        0.1,
        f"{_RM}: prune --epochs 20",
        f"{_CFG} lr 0.1 (the prune command sets none); wd 1e-4 acts on the scores",
        C(
            "last",
            f"{_SAVE}; the finetune stage loads prune/latest_exp/checkpoint/checkpoint.pth.tar (last) "
            "in get_compact_net_adv_train.sh",
        ),
    ),
    finetune=phase(
        "trades",
        100,
        0.01,
        f"{_CFG} epochs 100 (the finetune command sets none)",
        f"{_RM}: finetune --lr 0.01",
        C("last", f"open: {_SAVE}; which of the two the paper reports is not stated"),
    ),
    method={
        "layers": Fact(
            C(
                "conv + linear, all",
                f"{_R} models/layers.py SubnetConv / SubnetLinear in every conv and linear "
                "layer (--layer-type subnet); biases frozen with the weights",
            ),
            apgrid="conv + linear, all",
        ),
        "score_init": Fact(
            C(
                "sqrt(6 / fan_in) * w / max|w| per layer",
                f"{_R} utils/model.py initialize_scaled_score (--scaled-score-init in the prune command)",
            ),
            apgrid="sqrt(6 / fan_in) * w / max|w| per layer",
        ),
        "batch_norm": Fact(
            C(
                "affine, trained during the score search",
                f"{_R} utils/model.py prepare_model/freeze_vars: BN weight and bias stay trainable unless --freeze-bn "
                "(not set in the README commands)",
            ),
            apgrid="affine, trained during the score search",
        ),
        "selection": Fact(
            C(
                "per-layer top-k of |score|, straight-through gradient",
                f"{_R} models/layers.py GetSubnet (int((1 - k) n) lowest |score| zeroed per layer)",
            ),
            apgrid="per-layer top-k of |score|, straight-through gradient",
        ),
    },
)
