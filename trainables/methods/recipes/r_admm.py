"""r-admm: its authors' recipe, a source per value (trainables/recipes.py)."""

from apgrid.trainables.recipes import AuthorsRecipe, Fact
from apgrid.trainables.recipes import Cited as C

_R = "yeshaokai/Robustness-Aware-Pruning-ADMM"
_CFG = f"{_R} ADMM_examples/cifar10/config.yaml.example"
_MAIN = f"{_R} ADMM_examples/cifar10/adv_main.py"
_ATK = f"{_CFG} adv: epsilon 8, num_steps 10, step_size 2, random_start True (/255 in adv_main.py AttackPGD)"
_TRAIN_MODE = (
    f"{_MAIN} train(): config.model.train() wraps AttackPGD, so PGD runs in train mode (BN batch stats)"
)
_BEST = (
    f"{_MAIN} validate(): saves the epoch of lowest (adv_loss + nat_loss)/2 on the CIFAR-10 TEST set "
    "(PGD-10), skipped in the admm stage"
)

# the same in every stage (adv_main.py builds one optimiser and one attack for all three)
_EVERY_STAGE = {
    "momentum": C(0.9, f"{_MAIN} torch.optim.SGD(momentum=0.9)"),
    "weight_decay": C(1e-4, f"{_MAIN} torch.optim.SGD(weight_decay=1e-4)"),
    "batch_size": C(128, f"{_MAIN} trainloader batch_size=128"),
    "pgd_steps": C(10, _ATK),
    "step_size": C(2 / 255, _ATK),
    "eps": C(8 / 255, _ATK),
    "random_start": C(True, _ATK),
    "attack_mode": C("train", _TRAIN_MODE),
}

RECIPE = AuthorsRecipe(
    reference=(
        "Ye et al. 2019, Adversarial Robustness vs. Model Compression, or Both? (ICCV 2019); code: "
        f"{_R} (adv_main.py --stage pretrain|admm|retrain, cifar10 config.yaml.example, admm/admm.py)"
    ),
    parent={  # --stage pretrain
        "trainer": C(
            "pgd",
            f"{_MAIN} train(): adv_loss.backward() only (nat_loss logged, not trained); "
            "survey taxonomy.json RADMM_Ye2019Adversarial: 'A: Pretraining AT PGD'",
        ),
        "epochs": C(200, f"{_CFG} pretrain.epochs 200"),
        "lr": C(0.1, f"{_CFG} pretrain.lr 0.1"),
        **_EVERY_STAGE,
        "optimizer": C("sgd", f"{_CFG} pretrain.optimizer sgd"),
        "schedule": C(
            "cosine",
            f"{_CFG} pretrain.lr_scheduler cosine; {_MAIN}: CosineAnnealingLR per "
            "iteration, eta_min 4e-8, no warmup (warmup_epochs 0)",
        ),
        "milestones": C((), f"{_CFG} pretrain.lr_scheduler cosine"),
        "select": C("best", _BEST),
        "augment": C("crop-flip", f"{_MAIN} transform_train RandomCrop(32, padding=4), RandomHorizontalFlip"),
    },
    search={  # --stage admm
        "trainer": C("pgd", f"{_MAIN} train(): mixed_loss = adv CE + ADMM penalty (admm.append_admm_loss)"),
        "epochs": C(200, f"{_CFG} admm.epochs 200"),
        "lr": C(0.01, f"{_CFG} admm.lr 0.01"),
        **_EVERY_STAGE,
        "optimizer": C("sgd", f"{_CFG} admm.optimizer sgd"),
        "schedule": C(
            "admm-cycle",
            f"{_R} admm/admm.py admm_adjust_learning_rate (every batch): lr reset to "
            "0.01 at each Z/U update (epoch % admm_epoch == 0), x0.1 every admm_epoch/3 "
            "epochs in between",
        ),
        "milestones": C((), f"{_R} admm/admm.py admm_adjust_learning_rate (periodic, not milestones)"),
        "select": C(
            "last",
            f"{_MAIN}: the admm stage saves the model after its last epoch (validate() skips "
            "saving when config.admm)",
        ),
        "augment": C("crop-flip", f"{_MAIN} transform_train"),
    },
    finetune={  # --stage retrain (masked retraining)
        "trainer": C(
            "pgd",
            f"{_MAIN} train(): adv_loss.backward(), gradients masked (config.masked_retrain); "
            "survey taxonomy.json: 'A: Finetuning AT PGD'",
        ),
        "epochs": C(200, f"{_CFG} retrain.epochs 200"),
        "lr": C(0.01, f"{_CFG} retrain.lr 0.01"),
        **_EVERY_STAGE,
        "optimizer": C("sgd", f"{_CFG} retrain.optimizer sgd"),
        "schedule": C(
            "step",
            f"{_CFG} retrain.lr_scheduler default -> {_MAIN} MultiStepLR([80, 150], gamma 0.1) "
            "stepped per iteration",
        ),
        "milestones": C((80, 150), f"{_MAIN} epoch_milestones = [80,150] # for adv training"),
        "select": C("best", _BEST),
        "augment": C("crop-flip", f"{_MAIN} transform_train"),
    },
    method={
        "loss": Fact(
            C("PGD CE + sum_l rho/2 ||W_l - Z_l + U_l||^2", f"{_R} admm/admm.py append_admm_loss"),
            apgrid="PGD CE + sum_l rho/2 ||W_l - Z_l + U_l||^2",
        ),
        "layers": Fact(
            C(
                "conv only",
                f"{_CFG} resnet18/vgg16 prune_ratios conv1..conv20 / conv1..conv13 (all convs incl. "
                "shortcuts; the linear layer is not constrained)",
            ),
            apgrid="conv only",
        ),
        "selection": Fact(
            C(
                "layer-wise magnitude: per-layer percentile of |W| (irregular) or filter L2 (filter), at each "
                "layer's prune_ratio",
                f"{_R} admm/admm.py weight_pruning, masking()",
            ),
            apgrid="layer-wise magnitude: per-layer percentile of |W| (irregular) or filter L2 (filter), at each "
            "layer's prune_ratio",
        ),
        "other": Fact(
            C(
                "Z = Proj(W) at start; every admm_epoch=20 epochs: rho x1.3, Z = Proj(W + U), U += W - Z; rho 0.001",
                f"{_R} admm/admm.py admm_update, admm_multi_rho_scheduler; {_CFG} admm.admm_epoch 20, rho 0.001, "
                "multi_rho True",
            ),
            apgrid="Z = Proj(W) at start; every admm_epoch=20 epochs: rho x1.3, Z = Proj(W + U), U += W - Z; rho 0.001",
        ),
    },
)
