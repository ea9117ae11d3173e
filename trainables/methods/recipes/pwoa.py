"""pwoa: its authors' recipe, a source per value (trainables/recipes.py)."""

from apgrid.trainables.recipes import AuthorsRecipe, Fact
from apgrid.trainables.recipes import Cited as C

_R = "neu-spiral/PwoA"
_SH = f"{_R} scripts/cifar10.sh"
_YAML = f"{_R} config/general-prune-hsicbt-cifar10.yaml"
_ENG = f"{_R} source/hsicbt/core/engine.py training_hsic_prune"
_LOOP = f"{_R} source/hsicbt/core/train_hsic_prune.py hsic_prune"
_ADMM = f"{_R} source/hsicbt/math/admm.py"
_OPT = f"{_R} source/hsicbt/core/train_misc.py set_optimizer: SGD(momentum=0.9, weight_decay=1e-4)"
_T = "yaodongyu/TRADES train_trades_cifar10.py"

RECIPE = AuthorsRecipe(
    reference=(
        "Jian, Wang et al. 2022, Pruning Adversarially Robust Neural Networks without Adversarial Examples "
        f"(ICDM 2022); code: {_R} (scripts/cifar10.sh -> bin/run_hsicbt, core/engine.py training_hsic_prune)"
    ),
    parent={  # the authors download robust parents (readme: 'adversarially trained models provided by open-source work')
        "trainer": C(
            "trades",
            "survey taxonomy.json PwoA_Jian2022Pruning 'A: Pretraining AT TRADES'; "
            f"{_SH} defines preTrades but its runs load preLBGAT (LBGAT WRN-34-10, downloaded)",
        ),
        "epochs": C(76, f"{_T} --epochs 76"),
        "lr": C(0.1, f"{_T} --lr 0.1"),
        "momentum": C(0.9, f"{_T} --momentum 0.9"),
        "weight_decay": C(2e-4, f"{_T} --weight-decay 2e-4"),
        "batch_size": C(128, f"{_T} --batch-size 128"),
        "pgd_steps": C(10, f"{_T} --num-steps 10"),
        "step_size": C(0.007, f"{_T} --step-size 0.007"),
        "eps": C(0.031, f"{_T} --epsilon 0.031"),
        "beta": C(6.0, f"{_T} --beta 6.0"),
        "random_start": C(
            False, "yaodongyu/TRADES trades.py trades_loss: x + 0.001 N(0, I), not uniform in the ball"
        ),
        "attack_mode": C(
            "eval", "yaodongyu/TRADES trades.py trades_loss: model.eval() while crafting, model.train() after"
        ),
        "optimizer": C("sgd", f"{_T} optim.SGD"),
        "schedule": C("step", f"{_T} adjust_learning_rate: x0.1 from epoch 75 (1-based) of 76"),
        "milestones": C(
            (74,), f"{_T} adjust_learning_rate: epoch >= 75 of range(1, 77), i.e. after 74 epochs"
        ),
        "select": C("last", f"{_T}: saves every epoch; open which epoch the released checkpoint is"),
        "augment": C("crop-flip", f"{_T} RandomCrop(32, padding=4), RandomHorizontalFlip"),
    },
    search={  # the ADMM phase (-ep 50)
        "trainer": C(
            "distill",
            f"{_LOOP}: xentropy_weight 0 ({_YAML}), -adv adv --mix_ratio 0 (no adversarial batch), "
            "lambda_x = lambda_y = 0 in the ADMM phase (yaml; -lx/-ly not passed): loss = "
            "distillation + ADMM penalty only",
        ),
        "epochs": C(50, f"{_SH} -ep 50"),
        "lr": C(0.01, f"{_SH} -lr 0.01"),
        "momentum": C(0.9, _OPT),
        "weight_decay": C(1e-4, _OPT),
        "batch_size": C(128, f"{_SH} -bs 128"),
        "optimizer": C("sgd", f"{_YAML} optimizer: sgd"),
        "schedule": C(
            "admm-cycle",
            f"{_ADMM} admm_adjust_learning_rate after every step: 0.01 at each Z/U update "
            "epoch, x0.1 every admm_epochs/3 = 1 epoch (0.01, 0.001, 0.0001 cycle)",
        ),
        "milestones": C((), f"{_ADMM} admm_adjust_learning_rate (periodic)"),
        "select": C(
            "last", f"{_ENG}: hard_prune on the weights after the last ADMM epoch (eval_and_save(save=False))"
        ),
        "augment": C(
            "crop-flip",
            f"{_R} source/hsicbt/utils/dataset.py get_cifar10_data RandomCrop(32, 4), RandomHorizontalFlip",
        ),
    },
    finetune={  # masked retraining (-ree 100)
        "trainer": C(
            "distill+hsic",
            f"{_LOOP} (masks): distillation + retrain_lx HSIC(Z, X) - retrain_ly HSIC(Z, Y), "
            "clean inputs only (mix_ratio 0), no cross-entropy",
        ),
        "epochs": C(100, f"{_SH} -ree 100"),
        "lr": C(0.005, f"{_SH} -relr 0.005"),
        "momentum": C(0.9, _OPT),
        "weight_decay": C(1e-4, _OPT),
        "batch_size": C(128, f"{_YAML} retrain_bs: 128"),
        "optimizer": C("sgd", f"{_SH} -reopt sgd"),
        "schedule": C(
            "cosine",
            f"{_SH} --lr-scheduler cosine -> set_optimizer CosineAnnealingLR(T_max = epochs x "
            "batches, eta_min 4e-8), stepped per batch",
        ),
        "milestones": C((), f"{_SH} --lr-scheduler cosine"),
        "select": C(
            "best",
            f"{_R} source/hsicbt/utils/misc.py eval_and_save(save=True): keeps the epoch of highest "
            "PGD-10 (eps 8/255, alpha 2/255) accuracy on the CIFAR-10 TEST set",
        ),
        "augment": C("crop-flip", f"{_R} source/hsicbt/utils/dataset.py get_cifar10_data"),
    },
    method={
        "loss": Fact(
            C(
                "ADMM phase: 10 T^2 KL(teacher||student), T=30, + ADMM penalty (no HSIC); retraining: the same KL "
                "+ 2e-5 HSIC(Z, X) - 1e-4 HSIC(Z, Y); clean inputs, no CE",
                f"{_LOOP}; {_SH} --distill_temp 30 --distill_alpha 10 -relx 0.00002 -rely 0.0001 (no -lx/-ly); "
                f"{_YAML} lambda_x 0, lambda_y 0, sigma 5, k_type_y linear",
            ),
            apgrid="ADMM phase: 10 T^2 KL(teacher||student), T=30, + ADMM penalty (no HSIC); retraining: the same KL "
            "+ 2e-5 HSIC(Z, X) - 1e-4 HSIC(Z, Y); clean inputs, no CE",
        ),
        "layers": Fact(
            C(
                "conv only",
                f"{_ADMM} ADMM.init: 4-D weights and names containing 'fc.weight' (WRN's classifier); "
                "ResNet-18's 'linear' and VGG-16's 'layer8' are not constrained",
            ),
            apgrid="conv only",
        ),
        "selection": Fact(
            C(
                "layer-wise magnitude: per-layer percentile of |W| at prune_ratio",
                f"{_ADMM} weight_pruning, hard_prune",
            ),
            apgrid="layer-wise magnitude: per-layer percentile of |W| at prune_ratio",
        ),
        "weight_init": Fact(
            C(
                "the parent's weights; teacher = the same parent, frozen, eval mode",
                f"{_ENG}: student from -lm premodel, teacher from --distill_model_path (both LBGAT in {_SH})",
            ),
            apgrid="the parent's weights; teacher = the same parent, frozen, eval mode",
        ),
        "other": Fact(
            C(
                "HSIC Z = stem output, every residual block's output and the pooled features (not each conv); "
                "Z = Proj(W) re-set at the start of every epoch; Z/U update every 3 epochs with rho = min(1, 1.35 rho), "
                "rho0 0.01",
                f"{_R} source/hsicbt/model/resnet.py forward output_list; {_LOOP} calls {_ADMM} admm_initialization "
                "every epoch; z_u_update, admm_multi_rho_scheduler; --admm-epochs 3 --rho 0.01",
            ),
            apgrid="HSIC Z = stem output, every residual block's output and the pooled features (not each conv); "
            "Z = Proj(W) re-set at the start of every epoch; Z/U update every 3 epochs with rho = min(1, 1.35 rho), "
            "rho0 0.01",
        ),
    },
)
