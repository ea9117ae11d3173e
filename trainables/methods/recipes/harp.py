"""harp: its authors' recipe, a source per value (trainables/recipes.py)."""

from apgrid.trainables.recipes import AuthorsRecipe, Fact
from apgrid.trainables.recipes import Cited as C

_R = "intellisec/harp"
_CFG = f"{_R} configs/config-cifar10.yml"
_LOG = f"{_R} utils/logging.py parse_configs_file"
_RM = f"{_R} README.md"
_ATK = f"{_CFG} epsilon 0.031, num_steps 10, step_size 0.0078"
_TRAINER = (
    "survey taxonomy.json HARP_Zhao2023Holistic: 'Pretraining: AT TRADES', 'Finetuning: AT TRADES'; "
    f"{_R} args.py --adv_loss (pgd|trades|mart, default pgd; the README examples pass 'pgd'), one adv_loss for "
    "all three stages (README: 'the same adversarial loss adv_loss ... as in the pruning stage')"
)
_BETA = f"{_LOG}: beta 6.0 when adv_loss is trades"
_START = f"{_R} utils/adv.py trades_loss: x + 0.001 N(0, I) (pgd_loss would start uniform in the ball)"
_MODE = f"{_R} utils/adv.py trades_loss / pgd_loss: model.eval() while crafting, model.train() for the loss"
_OPT = f"{_R} utils/schedules.py get_optimizer SGD; {_CFG} momentum 0.9, wd 0.0005, batch_size 128"
_COS = f"{_R} utils/schedules.py cosine_schedule (lr 0.5 (1 + cos((epoch - 1) / epochs pi)) per epoch); {_CFG} lr_schedule cosine, warmup_epochs 0"
_AUG = f"{_R} data/cifar.py tr_train RandomCrop(32, padding=4), RandomHorizontalFlip (no normalisation for CIFAR-10)"
_BEST = f"{_R} train.py: model_best.pth.tar = best PGD-10 accuracy on the CIFAR-10 TEST set (val_method adv)"


def _phase(epochs, lr, epochs_src, lr_src, select):
    return {
        "trainer": C("trades", _TRAINER),
        "epochs": C(epochs, epochs_src),
        "lr": C(lr, lr_src),
        "momentum": C(0.9, _OPT),
        "weight_decay": C(5e-4, _OPT),
        "batch_size": C(128, _OPT),
        "pgd_steps": C(10, _ATK),
        "step_size": C(0.0078, _ATK),
        "beta": C(6.0, _BETA),
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
        "Zhao & Wressnegger 2023, Holistic Adversarially Robust Pruning (ICLR 2023); code: "
        f"{_R} (train.py --exp-mode pretrain|harp_prune|harp_finetune, utils/hw.py, utils/utils.py, configs/)"
    ),
    parent=_phase(
        100,
        0.1,
        f"{_RM}: 'We use 100 epochs in adversarial pre-training' (--epochs 100)",
        f"{_CFG} lr 0.1",
        C(
            "best",
            f"{_BEST}; {_LOG}: the prune stage loads pretrain/latest_exp/checkpoint/model_best.pth.tar",
        ),
    ),
    search=_phase(
        20,
        0.1,
        f"{_RM}: 'we use 20 epochs in the pruning stage' (harp_prune --epochs 20)",
        f"{_LOG}: lr forced to 0.1 for every *prune mode (scores and layer rates)",
        C(
            "best",
            f"{_R} train.py: in harp_prune is_best only once the hw-loss reached 0 (reach_hw), so model_best "
            f"is the best epoch after the target is met; {_LOG}: harp_finetune loads harp_prune model_best",
        ),
    ),
    finetune=_phase(
        100,
        0.01,
        f"{_RM}: harp_finetune --epochs 100",
        f"{_LOG}: lr forced to 0.01 for every *finetune mode",
        C("best", f"{_BEST}; {_R} test.py evaluates harp_finetune/latest_exp/checkpoint/model_best.pth.tar"),
    ),
    method={
        "loss": Fact(
            C(
                "adversarial loss + gamma_t max(density / target - 1, 0), gamma_t = (epoch + 1) 0.01 until the "
                "target is first met, then frozen",
                f"{_R} utils/hw.py hw_loss (gamma_dynamic True); train.py frozen_gamma; {_RM} --gamma 0.01 (weight)",
            ),
            apgrid="adversarial loss + gamma_t max(density / target - 1, 0), gamma_t = (epoch + 1) 0.01 until the "
            "target is first met, then frozen",
        ),
        "layers": Fact(
            C(
                "conv + linear, all",
                f"{_R} models/layers.py SubnetConv / SubnetLinear; configs/strategies.json one "
                "rate per conv and linear layer",
            ),
            apgrid="conv + linear, all",
        ),
        "score_init": Fact(
            C(
                "sqrt(6 / fan_in) * w / max|w| per layer",
                f"{_LOG}: scaled_score_init forced True for harp_prune; {_R} utils/model.py initialize_scaled_score",
            ),
            apgrid="sqrt(6 / fan_in) * w / max|w| per layer",
        ),
        "batch_norm": Fact(
            C(
                "affine, trained during the search",
                f"{_R} utils/model.py prepare_model/freeze_vars (no --freeze-bn in the README commands)",
            ),
            apgrid="affine, trained during the search",
        ),
        "selection": Fact(
            C(
                "per-layer top-k of |score| at a learned density k = sigmoid(r)(1 - k_min) + k_min, k_min = 0.1 target",
                f"{_R} utils/utils.py rate_act_func; models/layers.py set_prune_rate (k_min = global_k * alpha, "
                "args.py --alpha 0.1)",
            ),
            apgrid="per-layer top-k of |score| at a learned density k = sigmoid(r)(1 - k_min) + k_min, k_min = 0.1 target",
        ),
        "other": Fact(
            C(
                "every layer starts at density 0.1 whatever the target (strategy 010_uni); the mask used is the "
                "checkpoint's as learned",
                f"{_RM} --stg_id '010_uni'; {_R} configs/strategies.json vgg16_bn/resnet18 weight 010_uni = 0.1 per "
                "layer; utils/model.py initialize_stg_rate, utils/utils.py rate_init_func",
            ),
            apgrid="every layer starts at density 0.1 whatever the target (strategy 010_uni); the mask of the "
            "best epoch after the target is met (validation split; else the last epoch), every layer scaled down "
            "alike when the model still keeps more than the target",
        ),
    },
)
