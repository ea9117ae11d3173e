"""robustbird: its authors' recipe, a source per value (trainables/recipes.py)."""

from apgrid.trainables.recipes import AuthorsRecipe, Fact
from apgrid.trainables.recipes import Cited as C

_R = "VITA-Group/Sparsity-Win-Robust-Generalization"
_EB = f"{_R} Robust-Bird/train_eb.py"
_RM = f"{_R} README.md 'Robust Bird' (--stage1 sgd --epochs1 200 --stage2 pgd --epochs2 200 --density 0.2)"
_FN = f"{_R} Robust-Bird/utils/function.py"
_ATK = f"{_EB} --train_eps 8 --train_step 10 --train_gamma 2 (/255), --train_randinit on; {_FN} train_epoch_adv LinfPGDAttack"
_OPT = f"{_EB} SGD(--lr 0.1, --momentum 0.9, --weight_decay 5e-4), --batch_size 128"
_SCHED = f"{_EB} MultiStepLR(--decreasing_lr '50,150', gamma 0.1), stepped per epoch, reset for stage 2"
_AUG = f"{_R} Robust-Bird/datasets.py cifar10_dataloaders RandomCrop(32, padding=4), RandomHorizontalFlip (train 0-45k)"

RECIPE = AuthorsRecipe(
    reference=(
        "Chen, Zhang et al. 2022, Sparsity Winning Twice (ICLR 2022), Robust Bird; code: "
        f"{_R} Robust-Bird/train_eb.py (README command), utils/early_bird.py"
    ),
    parent={},  # pipeline B: from a random initialisation, no dense parent
    search={  # stage 1: standard training until the early-bird mask emerges
        "trainer": C("clean", f"{_RM}; {_EB} --stage1 sgd -> {_FN} train_epoch (clean CE)"),
        "epochs": C(200, f"{_RM} --epochs1 200 (an upper bound: the loop breaks at the early bird)"),
        "lr": C(0.1, _OPT),
        "momentum": C(0.9, _OPT),
        "weight_decay": C(5e-4, _OPT),
        "batch_size": C(128, _OPT),
        "optimizer": C("sgd", _OPT),
        "schedule": C("step", _SCHED),
        "milestones": C((50, 150), _SCHED),
        "select": C("last", f"{_EB}: prunes the model as it is at the early-bird epoch"),
        "augment": C("crop-flip", _AUG),
    },
    finetune={  # stage 2: PGD-AT of the pruned network
        "trainer": C("pgd", f"{_RM}; {_FN} train_epoch_adv: CE on PGD examples only"),
        "epochs": C(200, f"{_RM} --epochs2 200"),
        "lr": C(0.1, _OPT),
        "momentum": C(0.9, _OPT),
        "weight_decay": C(5e-4, _OPT),
        "batch_size": C(128, _OPT),
        "pgd_steps": C(10, _ATK),
        "step_size": C(2 / 255, _ATK),
        "eps": C(8 / 255, _ATK),
        "random_start": C(True, _ATK),
        "attack_mode": C(
            "train", f"{_FN} train_epoch_adv: model.train() before the loop, the attack runs on it"
        ),
        "optimizer": C("sgd", _OPT),
        "schedule": C("step", _SCHED),
        "milestones": C((50, 150), _SCHED),
        "select": C(
            "best",
            f"{_R} Robust-Bird/utils/function.py save_checkpoint model_RA_best: best VALIDATION "
            "PGD-20 accuracy (45k-50k split, eval mode); results.txt reports max and final test RA",
        ),
        "augment": C("crop-flip", _AUG),
    },
    method={
        "layers": Fact(
            C(
                "early-bird mask over conv weights; final prune over conv + linear",
                f"{_R} Robust-Bird/utils/early_bird.py unstructure_pruning (nn.Conv2d only); {_FN} prune_unstructured "
                "(Conv2d and Linear)",
            ),
            apgrid="early-bird mask over conv weights; final prune over conv + linear",
        ),
        "selection": Fact(
            C(
                "global |w|: prune.global_unstructured(L1Unstructured, amount = 1 - density) at the early-bird epoch",
                f"{_FN} prune_unstructured",
            ),
            apgrid="global |w|: prune.global_unstructured(L1Unstructured, amount = 1 - density) at the early-bird epoch",
        ),
        "weight_init": Fact(
            C(
                "stage 2 continues from the early-bird epoch's weights (no rewinding), fresh optimiser and schedule",
                f"{_EB}: model = prune_unstructured(model, ...), then a new SGD and MultiStepLR",
            ),
            apgrid="stage 2 continues from the early-bird epoch's weights (no rewinding), fresh optimiser and schedule",
        ),
        "other": Fact(
            C(
                "early bird: after each epoch, the conv mask at the target; stop when the newest is within 0.08 "
                "normalised Hamming distance of each of the 4 before it",
                f"{_R} Robust-Bird/utils/early_bird.py EarlyBird(epoch_keep=5), unstructure_early_bird_emerge (0.08)",
            ),
            apgrid="early bird: after each epoch, the conv mask at the target; stop when the newest is within 0.08 "
            "normalised Hamming distance of each of the 4 before it",
        ),
    },
)
