"""mad: its authors' recipe, a source per value (trainables/recipes.py)."""

from apgrid.trainables.recipes import AuthorsRecipe, Fact
from apgrid.trainables.recipes import Cited as C

_R = "ByungKwanLee/Masking-Adversarial-Damage"
_ADV = f"{_R} main_adv_pretrain.py"
_MAD = f"{_R} main_mad_pretrain.py"
_PR = f"{_R} pruner/kfac_MAD_pruner.py"
_TA = (
    f"{_R} attack/attack.py attack_loader: torchattacks.PGD(eps=--eps 0.03, alpha=eps/steps*2.3, steps=--steps 10, "
    "random_start=True)"
)
_TA_MODE = (
    "torchattacks attack.py Attack.__call__ -> _change_model_mode: model.eval() unless "
    "set_model_training_mode(True) (_model_training defaults False; not called in the repo; version unpinned)"
)
_FT_ATK = (
    f"{_PR} _optimize_weight_with_delta_L: loss_function(step_size=0.03/10*2.3, epsilon=0.03, "
    "perturb_steps=10, beta=0.5)"
)
_SCHED = "PresetLRScheduler({0: lr, int(epoch*0.5): lr*0.1, int(epoch*0.75): lr*0.01}), per epoch"
_AUG = f"{_R} utils/data_utils.py get_transforms cifar10: RandomCrop(32, padding=4), RandomHorizontalFlip"

RECIPE = AuthorsRecipe(
    reference=(
        "Lee, Kim & Ro 2022, Masking Adversarial Damage (CVPR 2022); code: "
        f"{_R} (main_adv_pretrain.py, compute_saliency.py, main_mad_pretrain.py, pruner/kfac_MAD_pruner.py)"
    ),
    parent={  # main_adv_pretrain.py: PGD-AT started from the plain model of main_pretrain.py (200 clean epochs)
        "trainer": C(
            "pgd",
            f"{_ADV} train(): CE on torchattacks PGD examples; survey taxonomy.json MAD_Lee2022Masking "
            "'Pretraining: AT PGD' (it starts from checkpoint/pretrain/..._best.t7 of main_pretrain.py)",
        ),
        "epochs": C(60, f"{_ADV} --epoch 60"),
        "lr": C(0.1, f"{_ADV} --learning_rate 0.1"),
        "momentum": C(0.9, f"{_ADV} optim.SGD(momentum=0.9)"),
        "weight_decay": C(2e-4, f"{_ADV} --weight_decay 0.0002"),
        "batch_size": C(128, f"{_ADV} --batch_size 128"),
        "pgd_steps": C(10, _TA),
        "step_size": C(0.03 / 10 * 2.3, _TA),
        "eps": C(0.03, _TA),
        "random_start": C(True, _TA),
        "attack_mode": C("eval", _TA_MODE),
        "optimizer": C("sgd", f"{_ADV} optim.SGD"),
        "schedule": C("step", f"{_ADV} {_SCHED}"),
        "milestones": C((30, 45), f"{_ADV} {_SCHED} (x0.1, then x0.01)"),
        "select": C(
            "best",
            f"{_ADV} test(): saves ..._adv_..._best.t7 at the best PGD accuracy on the CIFAR-10 TEST "
            "set; compute_saliency.py / main_mad_pretrain.py load that file",
        ),
        "augment": C("crop-flip", _AUG),
    },
    search={},  # one-shot: compute_saliency.py is one pass over the training set, no trained phase
    finetune={  # main_mad_pretrain.py after _global_remove_weight
        "trainer": C(
            "mart",
            f"{_PR} loss_function: MART (CE + margin term on x_adv, + beta KL(adv || nat) weighted "
            "by 1 - p_y(x)); survey taxonomy.json: 'Finetuning: AT PGD'",
        ),
        "epochs": C(60, f"{_MAD} --epoch 60"),
        "lr": C(0.1, f"{_MAD} --learning_rate 0.1"),
        "momentum": C(0.9, f"{_MAD} optim.SGD(mask_model.non_mask_parameters(), momentum=0.9)"),
        "weight_decay": C(2e-4, f"{_MAD} --weight_decay 0.0002"),
        "batch_size": C(128, f"{_MAD} --batch_size 128"),
        "pgd_steps": C(10, _FT_ATK),
        "step_size": C(0.03 / 10 * 2.3, _FT_ATK),
        "beta": C(0.5, _FT_ATK),
        "eps": C(0.03, _FT_ATK),
        "random_start": C(False, f"{_PR} loss_function: x + 0.001 N(0, I), then PGD on the CE"),
        "attack_mode": C(
            "eval", f"{_PR} loss_function: model.eval() while crafting, model.train() for the loss"
        ),
        "optimizer": C("sgd", f"{_MAD} optim.SGD"),
        "schedule": C("step", f"{_MAD} {_SCHED}"),
        "milestones": C((30, 45), f"{_MAD} {_SCHED} (x0.1, then x0.01)"),
        "select": C(
            "best",
            f"{_MAD} test(epoch, is_attack=False): keeps the epoch of best CLEAN accuracy on the "
            "CIFAR-10 TEST set (the attacked test only prints)",
        ),
        "augment": C("crop-flip", _AUG),
    },
    method={
        "loss": Fact(
            C("MART (beta 0.5) on PGD-10 examples from x + 0.001 N(0, I)", _FT_ATK),
            apgrid="MART (beta 0.5) on PGD-10 examples from x + 0.001 N(0, I)",
        ),
        "layers": Fact(
            C(
                "every layer but the last ranked globally; the last (linear) layer row by row (weights and bias) "
                "at the sparsity",
                f"{_PR} _global_remove_weight ({_R} utils/utils.py list_to_concat: adv_delta_L_avg[:-1] concatenated, "
                "the last layer's rows sorted; the onehot also zeroes its bias); VGG/ResNet convs are bias-free "
                "(models/vgg.py, models/resnet.py)",
            ),
            apgrid="every layer but the last ranked globally; the last (linear) layer row by row (weights only, "
            "its bias dense)",
        ),
        "selection": Fact(
            C(
                "lowest adversarial saliency 1/2 G_ii dw_ij (dw_i A)_j, dw = w (1 - f(m)), averaged over the batches",
                f"{_PR} _compute_delta_L (block-wise K-FAC); {_R} compute_saliency.py",
            ),
            apgrid="lowest adversarial saliency 1/2 G_ii dw_ij (dw_i A)_j, dw = w (1 - f(m)), averaged over the batches",
        ),
        "other": Fact(
            C(
                "saliency: one pass over the training set (batch 128), torchattacks PGD-10 at eps 0.03, soft mask by "
                "20 Adam steps (lr 0.1); saliency ties in device sort order",
                f"{_R} compute_saliency.py (--eps 0.03, --steps 10, mask_epoch=20, Adam lr 0.1); {_PR} "
                "_global_remove_weight concat_conv.sort()",
            ),
            apgrid="saliency: one pass over the training set (batch 128), PGD-10 at the threat model's eps, soft "
            "mask by 20 Adam steps (lr 0.1); ties broken by |w|",
        ),
    },
)
