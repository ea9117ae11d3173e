"""twinrep: its authors' recipe, a source per value (trainables/recipes.py)."""

from apgrid.trainables.recipes import AuthorsRecipe, Fact
from apgrid.trainables.recipes import Cited as C

_R = "UCAS-LCH/Twin-Rep"
_T = f"{_R} train.py"
_ADV = f"{_R} std_adv.py adv_loss"
_ATK = f"{_T} --epsilon 0.031 --num-steps 10 --step-size 0.0078 (--mode adv -> {_ADV})"
_OPT = f"{_T} optim.SGD(--lr 0.1, --momentum 0.9, --weight-decay 2e-4), --batch-size 128"
_LR = f"{_T} adjust_learning_rate: x0.1 from epoch 0.7 x epochs, x0.01 from 0.85 x epochs (1-based, of 100)"
_SEL = (
    f"{_T} main: after each epoch saves the best clean-test-accuracy model, 'pgd_' the best PGD-10 test "
    "accuracy (attack.py pgd_attack, eval mode) and 'last_'; the bests reset at the pruning epoch; which one "
    "the paper reports is not stated in the code"
)
_AUG = f"{_R} datasets.py cifar10_dataloader RandomCrop(32, padding=4), RandomHorizontalFlip"


def phase(epochs, milestones, epochs_src, milestones_src, select):
    return {
        "trainer": C(
            "pgd",
            f"survey taxonomy.json TwinRep_Li2023Learning 'D: Training step AT PGD'; {_T} --mode adv "
            f"(default 'nat'; 'trades' also offered) -> {_ADV}: CE on the adversarial batch only",
        ),
        "epochs": C(epochs, epochs_src),
        "lr": C(0.1, _OPT),
        "momentum": C(0.9, _OPT),
        "weight_decay": C(2e-4, _OPT),
        "batch_size": C(128, _OPT),
        "pgd_steps": C(10, _ATK),
        "step_size": C(0.0078, _ATK),
        "eps": C(0.031, _ATK),
        "random_start": C(False, f"{_ADV}: x + 0.001 N(0, I), not uniform in the ball"),
        "attack_mode": C("eval", f"{_ADV}: model.eval() while crafting, model.train() after"),
        "optimizer": C("sgd", _OPT),
        "schedule": C("step", _LR),
        "milestones": C(milestones, milestones_src),
        "select": select,
        "augment": C("crop-flip", _AUG),
    }


RECIPE = AuthorsRecipe(
    reference=(
        "Li, Qiu et al. 2023, Learning Adversarially Robust Sparse Networks via Weight Reparameterization "
        f"(AAAI 2023); code: {_R} (train.py --layer-type twin --pruning-type unstructure --pruning S --mode adv)"
    ),
    parent={},  # pipeline D: one run from a random initialisation
    # one 100-epoch run: twin training, global prune at the start of epoch 10 (--pruning-epoch 10), then the
    # same run continues under the mask; apgrid's search = epochs 1-9, its fine-tuning = epochs 10-100
    search=phase(
        9,
        (),
        f"{_T} --pruning-epoch 10: unstructured_pruning runs before training epoch 10 of range(1, 101)",
        f"{_LR}: no decay before epoch 10",
        C("last", f"{_T}: the mask is taken from the weights at the start of epoch 10"),
    ),
    finetune=phase(
        91,
        (60, 75),
        f"{_T} --epochs 100 (default) minus the 9 epochs before pruning",
        f"{_LR}: run epochs 70 and 85 = fine-tuning epochs 61 and 76 (1-based)",
        C("best", _SEL),
    ),
    method={
        "layers": Fact(
            C(
                "conv + linear, all",
                f"{_R} models/resnet.py, models/vgg.py: every conv_layer / linear_layer is a "
                "TwinConv / TwinLinear (model_utils.get_layers('twin'))",
            ),
            apgrid="conv + linear, all",
        ),
        "weight_init": Fact(
            C(
                "w = W * A with W and A two independent Kaiming-uniform tensors (nn.Conv2d default and "
                "kaiming_uniform_(a=sqrt(5)))",
                f"{_R} models/layers.py TwinConv / TwinLinear __init__",
            ),
            apgrid="w = a * b started at a = sign(w0) sqrt|w0|, b = sqrt|w0| (the initial weight unchanged)",
        ),
        "selection": Fact(
            C(
                "one global threshold on |W * A| over all twin layers at the target, at the start of epoch 10",
                f"{_T} unstructured_pruning (kthvalue at round(N x ratio) + 1)",
            ),
            apgrid="one global threshold on |a * b| over all conv and linear layers at the target, after the search",
        ),
        "other": Fact(
            C(
                "after pruning the twins keep training (W * A * mask, weight decay on both) with the same optimiser "
                "and lr schedule; the released train.py reads args.score_decay, which its parser never defines",
                f"{_R} models/layers.py TwinConv.forward; {_T} main (saved_model name uses args.score_decay)",
            ),
            apgrid="the twins are folded into one weight after the search; fine-tuning trains plain weights under "
            "the mask with a fresh optimiser",
        ),
    },
)
