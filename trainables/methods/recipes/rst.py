"""rst: its authors' recipe, a source per value (trainables/recipes.py)."""

from apgrid.trainables.recipes import AuthorsRecipe, Fact
from apgrid.trainables.recipes import Cited as C

_R = "GATECH-EIC/Robust-Scratch-Ticket"
_YML = f"{_R} config_rst/resnet18-usc-unsigned-cifar.yaml (vgg16-usc-unsigned-cifar.yaml identical)"
_RM = (
    f"{_R} README.md CIFAR-10 search command: main.py --config config_rst/resnet18-usc-unsigned-cifar.yaml "
    "--lr_policy cifar_piecewise --epochs 160 --attack_type pgd --task search"
)
_TR = f"{_R} trainers/default.py train_adv"
_ATK = (
    f"{_TR}: PGD with args.alpha forced to 2 for pgd, --epsilon 8, --attack_iters 7 (args.py defaults, not set by "
    "the README or the yaml), /255 and divided by the normalisation std (same ball in pixel space)"
)
_OPT = f"{_YML}: optimizer sgd, momentum 0.9, weight_decay 0.0005, batch_size 256"
_SCHED = f"{_R} utils/schedulers.py cifar_piecewise: lr x0.1 at epoch 80, x0.01 at 120"

RECIPE = AuthorsRecipe(
    reference=(
        "Fu et al. 2021, Drawing Robust Scratch Tickets (NeurIPS 2021); code: "
        f"{_R} (main.py --task search, trainers/default.py, utils/conv_type.py, utils/builder.py, utils/bn_type.py)"
    ),
    parent={},  # pipeline B: the randomly initialised network, never trained
    search={  # --task search: scores learned under PGD-AT, weights frozen at their random values
        "trainer": C(
            "pgd",
            f"{_TR}: CE on PGD examples only; survey taxonomy.json RST_Fu2021Drawing 'B: Pruning "
            "step: AT PGD', 'Training step: None'",
        ),
        "epochs": C(160, f"{_RM}; {_YML} epochs 160"),
        "lr": C(0.1, f"{_YML} lr 0.1 (on the scores)"),
        "momentum": C(0.9, _OPT),
        "weight_decay": C(5e-4, _OPT + " (applies to the scores, the only trained parameters)"),
        "batch_size": C(256, _OPT),
        "pgd_steps": C(7, _ATK),
        "step_size": C(2 / 255, _ATK),
        "eps": C(8 / 255, _ATK),
        "random_start": C(True, f"{_TR}: delta uniform in [-eps, eps] per channel"),
        "attack_mode": C("train", f"{_TR}: model.train() before the loop; the attack runs in train mode"),
        "optimizer": C("sgd", _OPT),
        "schedule": C("step", _SCHED + f" ({_RM})"),
        "milestones": C((80, 120), _SCHED),
        "select": C(
            "best",
            f"{_R} main.py: every --val_every 3 epochs PGD-20 (step 2/255) accuracy on the CIFAR-10 "
            "TEST set; model_best.pth kept (the ticket the fine-tuning tasks load)",
        ),
        "augment": C(
            "crop-flip", f"{_R} data/cifar.py RandomCrop(32, padding=4), RandomHorizontalFlip, Normalize"
        ),
    },
    finetune={},  # the ticket is used as found (ft_inherit / ft_reinit are separate experiments)
    method={
        "layers": Fact(
            C(
                "conv + linear, all",
                f"{_R} utils/builder.py: every conv a SubnetConv, the classifier a 1x1 "
                "SubnetConv (models/resnet_cifar.py, models/vgg.py, --last-layer-dense unset)",
            ),
            apgrid="conv + linear, all",
        ),
        "weight_init": Fact(
            C(
                "signed constant: sign(w) * gain / sqrt(fan_in), gain sqrt(2)",
                f"{_YML} init signed_constant, mode fan_in, nonlinearity relu; {_R} utils/builder.py _init_conv",
            ),
            apgrid="signed constant: sign(w) * gain / sqrt(fan_in), gain sqrt(2)",
        ),
        "score_init": Fact(
            C(
                "kaiming-uniform (a = sqrt(5)), independent of the weights",
                f"{_R} utils/conv_type.py SubnetConv.__init__: nn.init.kaiming_uniform_(scores, a=sqrt(5))",
            ),
            apgrid="kaiming-uniform (a = sqrt(5)), independent of the weights",
        ),
        "batch_norm": Fact(
            C(
                "non-affine (affine=False), running statistics only; every conv weight and bias frozen",
                f"{_YML} bn_type NonAffineBatchNorm, freeze_weights True; {_R} utils/bn_type.py; "
                "utils/net_utils.py freeze_model_weights",
            ),
            apgrid="non-affine (affine=False), running statistics only; every conv weight and bias frozen",
        ),
        "selection": Fact(
            C(
                "per-layer top-k of |score|, straight-through gradient",
                f"{_R} utils/conv_type.py GetSubnet (int((1 - k) n) lowest |score| zeroed per layer)",
            ),
            apgrid="per-layer top-k of |score|, straight-through gradient",
        ),
    },
)
