"""atmc: its authors' recipe, a source per value (trainables/recipes.py)."""

from apgrid.trainables.recipes import AuthorsRecipe, Fact
from apgrid.trainables.recipes import Cited as C

_R = "VITA-Group/ATMC"
_RM = f"{_R} README.md"
_TR = f"{_R} cifar/train_proj_admm_quant.py"
_UT = f"{_R} cifar/util_trts.py model_train_proj_prune_admm_quant"
_PGD = f"{_R} cifar/util_unnormalize.py pgd_gt"
_EPS = f"{_RM} --defend_eps 4 -> {_PGD}: eps = rho/255 = 4/255 (all stages)"
_STEP = f"{_PGD}: step = 1.25 eps / steps = 5/(7 x 255) with --defend_iter 7"
_RS = (
    f"{_PGD}: the random start is x_adv.data.add(...) (not add_), a no-op, so PGD starts at x "
    "(randinit=True in name only)"
)
_MODE = f"{_UT}: model.train() for the whole epoch, pgd_gt does not switch to eval"
_BEST = (
    f"{_TR}: saves 'sparse_'/'quant_' + name when PGD-7 test accuracy (eps 4/255, eval mode) "
    "improves; the next README stage loads that best file (e.g. --model_name sparse_..._l0proj_0.005.pth)"
)
_OPT = f"{_TR} optim.SGD(lr, weight_decay=--wd 1e-4, momentum=0.9)"

# the same in every stage (train_proj_admm_quant.py: one optimiser and one PGD for all four)
_EVERY_STAGE = {
    "momentum": C(0.9, _OPT),
    "weight_decay": C(1e-4, _OPT),
    "batch_size": C(128, f"{_TR} --batch_size default 128"),
    "pgd_steps": C(7, f"{_RM} --defend_iter 7"),
    "step_size": C(5 / (7 * 255), _STEP),
    "eps": C(4 / 255, _EPS),
    "random_start": C(False, _RS),
    "attack_mode": C("train", _MODE),
    "optimizer": C("sgd", _OPT),
}

RECIPE = AuthorsRecipe(
    reference=(
        "Gui, Wang et al. 2019, Model Compression with Adversarial Robustness: A Unified Optimization Framework "
        f"(NeurIPS 2019); code: {_R} (README's four CIFAR-10 runs of cifar/train_proj_admm_quant.py, ResNet-34)"
    ),
    parent={  # README run 1: --raw_train (dense)
        "trainer": C(
            "pgd+clean/2",
            f"{_UT}: loss = 0.5 CE(x) + 0.5 CE(x_adv) whenever --defend_algo is set, the dense run included",
        ),
        "epochs": C(200, f"{_RM} run 1 --epochs 200"),
        "lr": C(0.05, f"{_RM} run 1 --lr 0.05"),
        **_EVERY_STAGE,
        "schedule": C("step", f"{_TR}: lr *= 0.1 at each epoch in --decreasing_lr"),
        "milestones": C((80, 120, 150), f"{_RM} run 1 --decreasing_lr 80,120,150"),
        "select": C("best", _BEST),
        "augment": C(
            "crop-flip", f"{_R} cifar/dataset.py get10: Pad(4), RandomCrop(32), RandomHorizontalFlip"
        ),
    },
    search={  # README run 2: --prune_algo l0proj --prune_ratio 0.005 from the dense model, 32 bits
        "trainer": C("pgd+clean/2", f"{_UT}: 0.5 CE(x) + 0.5 CE(x_adv)"),
        "epochs": C(200, f"{_RM} run 2 --epochs 200"),
        "lr": C(0.01, f"{_RM} run 2 --lr 0.01"),
        **_EVERY_STAGE,
        "schedule": C("step", f"{_TR}: lr *= 0.1 at each epoch in --decreasing_lr"),
        "milestones": C((30, 60, 90, 120), f"{_RM} run 2 --decreasing_lr 30,60,90,120"),
        "select": C("best", _BEST),
        "augment": C("crop-flip", f"{_R} cifar/dataset.py get10"),
    },
    finetune={  # README run 4: 8-bit ATMC (kmeans_nnz_fixed_0_center ADMM under l0proj), after run 3 (ABC low rank)
        "trainer": C("pgd+clean/2", f"{_UT}: 0.5 CE(x) + 0.5 CE(x_adv) + rho/2 ||W + U - Z||^2 (rho 0.1)"),
        "epochs": C(150, f"{_RM} run 4 --epochs 150"),
        "lr": C(0.005, f"{_RM} run 4 --lr 0.005"),
        **_EVERY_STAGE,
        "schedule": C("step", f"{_TR}: lr *= 0.1 at each epoch in --decreasing_lr"),
        "milestones": C((60, 80, 120), f"{_RM} run 4 --decreasing_lr 60,80,120"),
        "select": C("best", _BEST + "; the output is the quantised Z ('quant_' file)"),
        "augment": C("crop-flip", f"{_R} cifar/dataset.py get10"),
    },
    method={
        "loss": Fact(
            C(
                "0.5 CE(x) + 0.5 CE(PGD x) in every run (dense, sparse, quantised); + rho/2 ||W - Z + U||^2 "
                "(rho 0.1) while quantising",
                f"{_UT}; {_TR} rho=0.1",
            ),
            apgrid="0.5 CE(x) + 0.5 CE(PGD x) in the search and the fine-tuning (the pgd+clean/2 trainer, else "
            "ATMC's hooks mix the clean half, never both), + rho/2 "
            "||W - Z + U||^2 (rho 0.1) in the search; the parent too where the grid leaves its trainer to "
            "this recipe (pgd+clean/2)",
        ),
        "layers": Fact(
            C(
                "conv + linear, all",
                f"{_R} utee/pruning_tools.py l0proj / layers_n: every '.weight' of dim > 1 (BN excluded)",
            ),
            apgrid="conv + linear, all",
        ),
        "selection": Fact(
            C(
                "global magnitude projection (one ranking over all layers) after every optimiser step",
                f"{_R} utee/pruning_tools.py l0proj; {_UT} proj_interval 1 (--prune_interval 1); "
                "keeps int(N x --prune_ratio) weights (prune_ratio = the kept share)",
            ),
            apgrid="global magnitude projection (one ranking over all layers) after every optimiser step",
        ),
        "other": Fact(
            C(
                "sparse run (32 bit), then low-rank W = AB + C run (--abc_special, 200 epochs, lr 0.005), then "
                "8-bit k-means ADMM (nnz, fixed 0 centre) every 10 batches (--quant_interval 10) under the "
                "projection; output Z",
                f"{_RM} runs 2-4; {_R} utee/quantize.py quantize_kmeans_nnz_fixed_0_center; "
                f"{_R} super_module/super_class.py duplicate_plus / duplicate_update",
            ),
            apgrid="one search from the dense parent: projection + 8-bit k-means ADMM every 10 batches; no "
            "low-rank part; output Z, then fine-tuning with the codebook snapped after every step",
        ),
    },
)
