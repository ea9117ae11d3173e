"""flyingbird: its authors' recipe, a source per value (trainables/recipes.py)."""

from apgrid.trainables.recipes import AuthorsRecipe, Fact
from apgrid.trainables.recipes import Cited as C

_R = "VITA-Group/Sparsity-Win-Robust-Generalization"
_M = f"{_R} main_adv.py"
_U = f"{_R} utils.py"
_CORE = f"{_R} sparselearning/core.py"
_ATK = f"{_M} --train_eps 8 --train_step 10 --train_gamma 2 (/255), --train_randinit on; {_U} train_epoch_adv LinfPGDAttack"

SEARCH = {  # the whole sparse adversarial training (README 'Flying Bird' command = scripts/fb.sh)
    "trainer": C("pgd", f"{_U} train_epoch_adv: CE on LinfPGDAttack examples only"),
    "epochs": C(200, f"{_M} --epochs 200"),
    "lr": C(0.1, f"{_M} --lr 0.1"),
    "momentum": C(0.9, f"{_M} --momentum 0.9"),
    "weight_decay": C(5e-4, f"{_M} --weight_decay 5e-4"),
    "batch_size": C(128, f"{_M} --batch_size 128"),
    "pgd_steps": C(10, _ATK),
    "step_size": C(2 / 255, _ATK),
    "eps": C(8 / 255, _ATK),
    "random_start": C(True, _ATK),
    "attack_mode": C("train", f"{_U} train_epoch_adv: model.train() before the loop, the attack runs on it"),
    "optimizer": C("sgd", f"{_M} torch.optim.SGD"),
    "schedule": C("step", f"{_M} MultiStepLR(gamma 0.1), stepped per epoch"),
    "milestones": C((100, 150), f"{_M} --decreasing_lr 100,150"),
    "select": C(
        "best",
        f"{_U} save_checkpoint model_RA_best / getinfo: the epoch of best VALIDATION robust "
        "accuracy (PGD-20, eps 8/255, step 2/255, eval mode; --test_step 20) on the last 5,000 "
        f"training images ({_R} datasets.py cifar10_dataloaders: train 0-45k, val 45k-50k)",
    ),
    "augment": C(
        "crop-flip", f"{_R} datasets.py cifar10_dataloaders RandomCrop(32, padding=4), RandomHorizontalFlip"
    ),
}

METHOD = {
    "layers": Fact(
        C("conv + linear, all", f"{_CORE} Masking.add_module: every 4-D and 2-D parameter; biases removed"),
        apgrid="conv + linear, all",
    ),
    "weight_init": Fact(
        C(
            "random init; random masks at Ideal-Gas-Quota layer densities (--sparse_init igq, --density 0.2)",
            f"{_CORE} Masking.init mode 'igq', {_R} sparselearning/igq.py; {_M} --sparse_init igq",
        ),
        apgrid="random init; random masks at Ideal-Gas-Quota layer densities (--sparse_init igq, --density 0.2)",
    ),
    "selection": Fact(
        C(
            "every 900 iterations (1200 after half the epochs): per layer drop ceil(rate x active) smallest |w|, "
            "regrow at random; rate cosine 0.5 -> 0.005 over all iterations",
            f"{_U} train_epoch_adv (--update_frequency 900, --dynamic_fre --second_frequency 1200); {_CORE} "
            "truncate_weights, magnitude_death, random_growth, CosineDecay(eta_min 0.005); --death-rate 0.5",
        ),
        apgrid="every 900 iterations (1200 after half the epochs): per layer drop ceil(rate x active) smallest |w|, "
        "regrow at random; rate cosine 0.5 -> 0.005 over all iterations",
    ),
    "other": Fact(
        C(
            "random regrowth draws each inactive weight with probability regrowth/inactive (the count right in "
            "expectation); the released code reads args.dynamic_sparse, which main_adv.py never defines",
            f"{_CORE} random_growth; dst_prune/truncate_weights read self.args.dynamic_sparse (absent from {_M}'s "
            "parser: the first mask update raises AttributeError as released)",
        ),
        apgrid="regrows exactly as many as dropped",
    ),
}

RECIPE = AuthorsRecipe(
    reference=(
        "Chen, Zhang et al. 2022, Sparsity Winning Twice: Better Robust Generalization from More Efficient "
        f"Training (ICLR 2022), Flying Bird; code: {_R} (main_adv.py --density 0.2 --dynamic_fre --fb, scripts/fb.sh)"
    ),
    parent={},  # pipeline D: sparse training from a random initialisation, no dense parent
    search=SEARCH,
    finetune={},  # no training after the sparse run
    method=METHOD,
)
