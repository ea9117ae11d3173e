"""Adversarial training, one epoch at a time.

Every epoch seeds its own shuffling and attack noise from (seed, epoch), and every batch its data
augmentation from (seed, epoch, batch), so a run resumed from an epoch checkpoint continues
exactly as an uninterrupted one would.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from apgrid.trainables.attacks import fgsm_rs, pgd

# pgd (Madry et al. 2018) | trades (Zhang et al. 2019) | fgsm-rs (Wong et al. 2020) | clean |
# fgsm: one signed-gradient step of eps from x, no random start (Goodfellow et al. 2015) | mart
# (Wang et al. 2020, as ByungKwanLee/Masking-Adversarial-Damage pruner/kfac_MAD_pruner.py
# loss_function trains) | pgd+clean/2: 1/2 CE(x) + 1/2 CE(x_adv) (VITA-Group/ATMC cifar/util_trts.py)
TRAINERS = ("pgd", "trades", "fgsm-rs", "clean", "fgsm", "mart", "pgd+clean/2")
LINF_ONLY = ("fgsm-rs", "fgsm")  # signed-gradient steps: defined for an Linf threat
# Data augmentation as the references train: CIFAR with random crop (padding 4) and horizontal flip,
# SVHN with crop only (HYDRA's data loaders; Madry et al. 2018; Rice et al. 2020), digits with none.
AUGMENTATIONS = ("none", "crop", "crop-flip")
SELECTIONS = ("last", "best")  # best: highest PGD accuracy on the validation split
# cosine: annealed per epoch to 0; step: x0.1 at each milestone epoch (torch's MultiStepLR, the
# references' usual decay); constant: the initial rate throughout
SCHEDULES = ("cosine", "step", "constant")
# eval: the training attack sees batch norm's running statistics (most AT code, HYDRA's); train: the
# batch's own, as in R-ADMM, ATMC, RST, Flying Bird (their attack runs inside model.train())
ATTACK_MODES = ("eval", "train")


@dataclass(frozen=True)
class Recipe:
    """How to (re)train: the adversarial trainer and its optimiser. Each field's metadata bounds
    the values a spec may give it (grid/spec.py checks them generically)."""

    # one of TRAINERS (above)
    trainer: str = field(default="pgd", metadata={"choices": TRAINERS})
    epochs: int = field(default=10, metadata={"min": 1})
    lr: float = field(default=0.05, metadata={"low": 0.0, "high": 10.0})
    momentum: float = field(default=0.9, metadata={"low": 0.0, "high": 10.0})
    weight_decay: float = field(default=5e-4, metadata={"low": 0.0, "high": 10.0})
    batch_size: int = field(default=128, metadata={"min": 1})
    pgd_steps: int = field(default=7, metadata={"min": 1})  # PGD-AT inner steps
    # default: 2.5 eps / steps for PGD/TRADES, 1.25 eps for FGSM-RS
    step_size: float | None = field(default=None, metadata={"low": 0.0, "high": 1.0})
    # TRADES's trade-off between clean CE and the robust KL term; MART's weight of its KL term
    beta: float = field(default=6.0, metadata={"low": 0.0, "high": 100.0})
    # none | crop | crop-flip (the spec's default depends on the dataset)
    augment: str = field(default="none", metadata={"choices": AUGMENTATIONS})
    # last | best (on the validation split; dataset.validation > 0)
    select: str = field(default="last", metadata={"choices": SELECTIONS})
    schedule: str = field(default="cosine", metadata={"choices": SCHEDULES})
    milestones: tuple[int, ...] = field(default=(), metadata={"min": 1, "empty": True})  # step epochs
    attack_mode: str = field(default="eval", metadata={"choices": ATTACK_MODES})

    def __post_init__(self):  # a config read back from JSON holds a list
        object.__setattr__(self, "milestones", tuple(self.milestones))


# Fields added after models were first trained: at these values a recipe computes what it computed
# before they existed, so they stay out of its config (and of the content-addressed model ids).
NEUTRAL = {"augment": "none", "select": "last", "schedule": "cosine", "milestones": (), "attack_mode": "eval"}


def recipe_config(recipe: Recipe) -> dict:
    """The recipe as a model's config records it (see NEUTRAL)."""
    from dataclasses import asdict

    return {k: v for k, v in asdict(recipe).items() if NEUTRAL.get(k, object()) != v}


def augment_batch(x: torch.Tensor, kind: str, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """Random crop of the zero-padded image back to its size (torchvision's RandomCrop(size,
    padding=4)) and, for crop-flip, a horizontal flip with probability 1/2, per sample."""
    if kind == "none":
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (padding,) * 4)
    top = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    left = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    rows = (top[:, None] + torch.arange(h))[:, None, :, None]
    cols = (left[:, None] + torch.arange(w))[:, None, None, :]
    out = padded[
        torch.arange(n)[:, None, None, None], torch.arange(x.shape[1])[None, :, None, None], rows, cols
    ]
    if kind == "crop-flip":
        flip = torch.rand(n, generator=generator) < 0.5
        out[flip] = out[flip].flip(-1)
    return out


def make_optimizer(params, recipe: Recipe) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)


def lr_at(recipe: Recipe, epoch: int) -> float:
    """The learning rate of an epoch under the recipe's schedule (deterministic from the epoch
    number alone, so a resumed run continues it)."""
    import math

    if recipe.schedule == "step":  # MultiStepLR(milestones, gamma=0.1), stepped once an epoch
        return recipe.lr * 0.1 ** sum(epoch >= m for m in recipe.milestones)
    if recipe.schedule == "constant":
        return recipe.lr
    return 0.5 * recipe.lr * (1 + math.cos(math.pi * epoch / max(recipe.epochs, 1)))


class TrainingHooks:
    """How a pruning method changes an epoch of training, in the pattern of Torch-Pruning's
    regularize / update_regularizer: train_epoch calls each hook where it applies, and every
    default here leaves the recipe's adversarial training as it is."""

    def learning_rate(self, recipe: Recipe, epoch: int) -> float:
        """The epoch's learning rate (R-ADMM's cycle); default: the recipe's cosine schedule."""
        return lr_at(recipe, epoch)

    def objective(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor):
        """(loss, logits) of a method's own on the clean batch in place of the recipe's adversarial
        loss (PwoA trains without adversarial examples), or None."""
        return None

    def sample_losses(self, losses: torch.Tensor, model: nn.Module, x, y, idx) -> torch.Tensor:
        """The batch's per-sample adversarial losses as the method weighs them (ATMC mixes in clean
        cross-entropy, boundary-aware fine-tuning weighs samples; `idx`: their training indices)."""
        return losses

    def penalty(self):
        """A term added to every batch's loss (ADMM's rho/2 ||W - Z + U||^2, HARP's rate loss)."""
        return 0.0

    def after_step(self, batch: int) -> None:
        """Run after every optimiser step (projections, mask updates, codebooks)."""


PLAIN = TrainingHooks()


class LayeredHooks(TrainingHooks):
    """Hooks laid over `base`: what they do not change, base does (a search phase's hooks over
    PwoA's distillation, which holds in every phase)."""

    def __init__(self, base: TrainingHooks):
        self.base = base

    def learning_rate(self, recipe, epoch):
        return self.base.learning_rate(recipe, epoch)

    def objective(self, model, x, y):
        return self.base.objective(model, x, y)

    def sample_losses(self, losses, model, x, y, idx):
        return self.base.sample_losses(losses, model, x, y, idx)

    def penalty(self):
        return self.base.penalty()

    def after_step(self, batch):
        self.base.after_step(batch)


def adversarial_examples(model, x, y, recipe: Recipe, eps: float, norm: str) -> torch.Tensor:
    if recipe.trainer == "clean" or eps == 0:
        return x
    if recipe.trainer == "fgsm-rs":
        return fgsm_rs(model, x, y, eps=eps, step_size=recipe.step_size)
    if recipe.trainer == "fgsm":  # x + eps sign(grad CE), no random start (Goodfellow et al. 2015)
        return pgd(model, x, y, eps=eps, steps=1, step_size=recipe.step_size or eps, norm=norm)
    step = recipe.step_size or 2.5 * eps / recipe.pgd_steps
    loss_fn = None
    if recipe.trainer == "trades":  # maximise KL(f(x) || f(x')) from x + 0.001 N(0, I) (Alg. 1)
        with torch.no_grad():
            p_clean = F.softmax(model(x), dim=1)

        def loss_fn(logits):
            return F.kl_div(F.log_softmax(logits, 1), p_clean, reduction="sum")

    if recipe.trainer in ("trades", "mart"):  # mart: kfac_MAD_pruner.py loss_function, CE from there
        noise = 0.001 * torch.randn_like(x)
    elif recipe.trainer == "pgd+clean/2":  # VITA-Group/ATMC cifar/util_unnormalize.py pgd_gt: from x
        noise = None
    else:
        noise = (torch.rand_like(x) * 2 - 1) * eps
    return pgd(
        model,
        x,
        y,
        eps=eps,
        steps=recipe.pgd_steps,
        step_size=step,
        norm=norm,
        init_noise=noise,
        loss_fn=loss_fn,
    )


def per_sample_loss(model, x, x_adv, y, recipe: Recipe) -> tuple[torch.Tensor, torch.Tensor]:
    """The training loss of each sample, and the logits it was computed on (for accuracy)."""
    logits_adv = model(x_adv)
    if recipe.trainer == "mart":
        return mart_losses(model(x), logits_adv, y, recipe.beta), logits_adv
    if recipe.trainer == "pgd+clean/2":  # VITA-Group/ATMC cifar/util_trts.py: 0.5 CE(x) + 0.5 CE(x_adv)
        clean = F.cross_entropy(model(x), y, reduction="none")
        return 0.5 * clean + 0.5 * F.cross_entropy(logits_adv, y, reduction="none"), logits_adv
    if recipe.trainer != "trades":
        return F.cross_entropy(logits_adv, y, reduction="none"), logits_adv
    # TRADES (Zhang et al. 2019, Eq. 5): CE(f(x), y) + beta * KL(f(x) || f(x_adv))
    logits = model(x)
    kl = F.kl_div(F.log_softmax(logits_adv, 1), F.softmax(logits, 1), reduction="none").sum(1)
    return F.cross_entropy(logits, y, reduction="none") + recipe.beta * kl, logits_adv


def mart_losses(logits: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor, beta: float) -> torch.Tensor:
    """MART per sample (Wang et al. 2020, Eq. 6, as kfac_MAD_pruner.py loss_function computes it,
    its constants included): BCE = CE(x_adv, y) - log(1.0001 - p_adv[y'] + 1e-12), y' the most likely
    wrong class of x_adv, plus beta KL(p(x) || p(x_adv)) (1.0000001 - p(x)_y)."""
    p_adv = F.softmax(logits_adv, dim=1)
    top2 = p_adv.argsort(dim=1)[:, -2:]
    wrong = torch.where(top2[:, -1] == y, top2[:, -2], top2[:, -1])
    margin = -torch.log(1.0001 - p_adv.gather(1, wrong[:, None]).squeeze(1) + 1e-12)
    p_nat = F.softmax(logits, dim=1)
    kl = F.kl_div(torch.log(p_adv + 1e-12), p_nat, reduction="none").sum(1)
    robust = kl * (1.0000001 - p_nat.gather(1, y[:, None]).squeeze(1))
    return F.cross_entropy(logits_adv, y, reduction="none") + margin + beta * robust


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    *,
    recipe: Recipe,
    eps: float,
    norm: str,
    seed: int,
    epoch: int,
    device: torch.device,
    hooks: TrainingHooks = PLAIN,
) -> dict:
    """One epoch of adversarial training on whatever `optimizer` holds (the weights, or HYDRA's
    scores with the weights frozen), changed where a pruning method's `hooks` change it; returns
    mean loss and accuracy on the adversarial batches."""
    torch.manual_seed(seed * 10_007 + epoch)
    for group in optimizer.param_groups:
        group["lr"] = hooks.learning_rate(recipe, epoch)
    order = torch.randperm(len(y_train), generator=torch.Generator().manual_seed(seed + epoch))
    total_loss, correct, seen = 0.0, 0, 0
    for batch, start in enumerate(range(0, len(order), recipe.batch_size)):
        idx = order[start : start + recipe.batch_size]
        x = x_train[idx]
        if recipe.augment != "none":
            seed_of_batch = (seed * 1_000_003 + epoch) * 1_000_003 + batch
            x = augment_batch(x, recipe.augment, torch.Generator().manual_seed(seed_of_batch))
        x, y = x.to(device), y_train[idx].to(device)
        model.train()  # a method's own loss trains in train mode; the attack below switches to eval
        own = hooks.objective(model, x, y)
        if own is not None:
            loss, logits = own
        else:
            if recipe.attack_mode == "eval":  # fixed BN statistics, as in most AT code
                model.eval()
            x_adv = adversarial_examples(model, x, y, recipe, eps, norm)
            model.train()
            losses, logits = per_sample_loss(model, x, x_adv, y, recipe)
            loss = hooks.sample_losses(losses, model, x, y, idx).mean()
        loss = loss + hooks.penalty()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        hooks.after_step(batch)
        total_loss += loss.item() * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        seen += len(y)
    model.eval()
    return {"train_loss": total_loss / seen, "train_adv_acc": correct / seen}


def robust_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, **attack) -> float:
    """PGD-`steps` accuracy (step 2.5 eps / steps, random start seeded once): the validation score
    of model selection and of the catastrophic-overfitting check; `attack` as robust_loss_and_accuracy
    takes it (eps, norm, device, steps, batch_size)."""
    return robust_loss_and_accuracy(model, x, y, **attack)[1]


def robust_loss_and_accuracy(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str,
    device,
    steps: int = 10,
    batch_size: int = 500,
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy under PGD-`steps` (as robust_accuracy attacks)."""
    model.eval()
    gen = torch.Generator().manual_seed(0)
    correct, loss = 0, 0.0
    for i in range(0, len(y), batch_size):
        xb, yb = x[i : i + batch_size], y[i : i + batch_size]
        noise = (torch.rand(xb.shape, generator=gen) * 2 - 1) * eps
        adv = pgd(
            model,
            xb.to(device),
            yb.to(device),
            eps=eps,
            steps=steps,
            step_size=2.5 * eps / steps,
            norm=norm,
            init_noise=noise,
        )
        with torch.inference_mode():
            logits = model(adv).cpu()
        correct += (logits.argmax(1) == yb).sum().item()
        loss += F.cross_entropy(logits, yb, reduction="sum").item()
    return loss / max(1, len(y)), correct / max(1, len(y))


@torch.inference_mode()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device, batch_size=1000) -> float:
    model.eval()
    correct = sum(
        (model(x[i : i + batch_size].to(device)).argmax(1).cpu() == y[i : i + batch_size]).sum().item()
        for i in range(0, len(y), batch_size)
    )
    return correct / len(y)
