"""Attacks as plain functions: tensors in, tensors out (images in [0, 1]).

PGD and FGSM-RS are written here (a dozen lines each, and training needs them in-loop); AutoAttack
comes from `pyautoattack` and FMN from `secml-torch`, wrapped only to return per-sample results.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

NORMS = ("Linf", "L2")


def sample_noise(sample_idx: torch.Tensor, shape, seed: int, eps: float) -> torch.Tensor:
    """Uniform noise in [-eps, eps] drawn from a generator seeded by (seed, sample index), so the
    noise a sample gets does not depend on which batch or shard it lands in."""
    noise = torch.empty((len(sample_idx), *shape))
    for row, idx in enumerate(sample_idx.tolist()):
        gen = torch.Generator().manual_seed(seed * 1_000_003 + int(idx))
        noise[row] = torch.rand(shape, generator=gen) * 2 * eps - eps
    return noise


def _normalize_l2(g: torch.Tensor) -> torch.Tensor:
    norms = g.flatten(1).norm(dim=1).clamp_min(1e-12)
    return g / norms.view(-1, *([1] * (g.dim() - 1)))


def _project(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    if norm == "Linf":
        return delta.clamp(-eps, eps)
    norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
    factor = (eps / norms).clamp(max=1.0)
    return delta * factor.view(-1, *([1] * (delta.dim() - 1)))


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    steps: int,
    step_size: float,
    norm: str = "Linf",
    init_noise: torch.Tensor | None = None,
    loss_fn=None,
) -> torch.Tensor:
    """PGD maximising cross-entropy (Madry et al. 2018, Sec. 2), or `loss_fn(logits)` when given
    (TRADES maximises a KL divergence); `init_noise` is the random start."""
    loss_fn = loss_fn or (lambda logits: F.cross_entropy(logits, y))
    delta = torch.zeros_like(x) if init_noise is None else init_noise.to(x.device).clone()
    delta = ((x + _project(delta, eps, norm)).clamp(0, 1) - x).detach()
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = loss_fn(model(x + delta))
        (grad,) = torch.autograd.grad(loss, delta)
        step = grad.sign() if norm == "Linf" else _normalize_l2(grad)
        delta = _project(delta.detach() + step_size * step, eps, norm)
        delta = ((x + delta).clamp(0, 1) - x).detach()
    return (x + delta).detach()


def fgsm_rs(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, step_size: float | None = None
) -> torch.Tensor:
    """FGSM with random start (Wong et al. 2020, Alg. 3: step 1.25 eps from a uniform start)."""
    step_size = 1.25 * eps if step_size is None else step_size
    delta = (torch.rand_like(x) * 2 - 1) * eps
    return pgd(model, x, y, eps=eps, steps=1, step_size=step_size, init_noise=delta)


def logit_margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """z_y - max_{j != y} z_j: positive when correct, its size a proxy for distance to the boundary."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.clone()
    others.scatter_(1, y[:, None], float("-inf"))
    return true - others.max(dim=1).values


# -- AutoAttack --------------------------------------------------------------------------------

# The attacks each pyautoattack version runs, in its order (AutoAttack._set_version; a test checks
# these against the library), so a spec can name a subset without building a model.
AUTOATTACK_ENSEMBLES = {
    "standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
    "plus": ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"),
    "rand": ("apgd-ce", "apgd-dlr"),
}


def autoattack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str,
    version: str,
    seed: int,
    batch_size: int = 500,
    device: str | torch.device = "cpu",
    attacks: tuple[str, ...] | None = None,
):
    """Per-sample AutoAttack: returns (robust flags, name of the attack that broke each sample or
    None, adversarial points).

    pyautoattack re-seeds every attack with `seed` and attacks only the still-robust samples, in
    order, so running its ensemble one attack at a time on the survivors gives exactly the points
    of `run_standard_evaluation` while recording which attack flipped each sample.
    `attacks` keeps only those of the version's ensemble, with the version's settings and order:
    the first k attacks of an ensemble then break exactly the samples they break in the full run.
    """
    from pyautoattack import AutoAttack

    model.eval()
    adversary = AutoAttack(model, eps=eps, norm=norm, version=version, seed=seed, device=device)
    adversary.verbose = False
    logging.getLogger("auto-attack").setLevel(logging.WARNING)
    ensemble = [a for a in adversary.attacks_to_run if attacks is None or a in attacks]
    with torch.no_grad():
        robust = model(x.to(device)).argmax(1).cpu() == y
    broken_by: list[str | None] = [None] * len(y)
    x_adv = x.clone()
    for attack in ensemble:
        idx = torch.nonzero(robust).flatten()
        if len(idx) == 0:
            break
        adversary.attacks_to_run = [attack]
        adv, pred = adversary.run_standard_evaluation(x[idx], y[idx], batch_size=batch_size)
        flipped = pred.cpu() != y[idx]
        for i in idx[flipped].tolist():
            broken_by[i] = attack
        x_adv[idx[flipped]] = adv[flipped].cpu()
        robust[idx[flipped]] = False
    return robust, broken_by, x_adv


# -- FMN ---------------------------------------------------------------------------------------


def lp_norm(delta: torch.Tensor, norm: str) -> torch.Tensor:
    p = {"Linf": float("inf"), "L2": 2.0, "L1": 1.0}[norm]
    return delta.flatten(1).norm(p=p, dim=1)


class DLRLoss(nn.Module):
    """Difference of Logits Ratio (Croce & Hein 2020, eq. 5), per sample, untargeted: grows as the
    sample nears and crosses the boundary, like secml-torch's logit loss, so FMN maximises it."""

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        top = logits.sort(dim=1, descending=True).values
        true = logits.gather(1, y[:, None]).squeeze(1)
        best_other = torch.where(top[:, 0] == true, top[:, 1], top[:, 0])
        return -(true - best_other) / (top[:, 0] - top[:, 2] + 1e-12)


# HO-FMN's modular FMN (pralab/HO-FMN src/utils/fmn_config.py LOSSES, OPTIMIZERS, SCHEDULERS): its
# losses, optimisers and step-size schedulers. RLROP is left out: src/attacks/fmn.py FMN.forward scales
# each sample's loss by that sample's step size and then takes the sign of the gradient, so the
# step never changes and RLROP runs as "none" with two idle hyperparameters.
HOFMN_LOSSES = ("logit", "ce", "dlr")  # LL, CE, DLR
HOFMN_OPTIMIZERS = ("sgd", "adam", "adamax")
HOFMN_SCHEDULERS = ("calr", "none")


@dataclass(frozen=True)
class FMNConfig:
    """One attack of HO-FMN (Mura et al. 2024, "HO-FMN: Hyperparameter Optimization for Fast
    Minimum-Norm Attacks"): FMN with a loss, an optimiser of the perturbation, a step-size
    scheduler and the optimiser's hyperparameters, run as the authors' FMN runs them
    (pralab/HO-FMN src/attacks/fmn.py FMN.forward): the optimiser is given the gradient's sign,
    whatever the norm, so `lr` is a step per input feature, the unit of HO-FMN's lr range
    [8/255, 10]; CALR anneals it to 0 over the run. The defaults are their FMN's (LL, SGD, CALR,
    alpha_init 1)."""

    loss: str = "logit"  # HOFMN_LOSSES
    optimizer: str = "sgd"  # HOFMN_OPTIMIZERS
    scheduler: str = "calr"  # HOFMN_SCHEDULERS
    lr: float = 1.0
    momentum: float = 0.0  # SGD only
    dampening: float = 0.0  # SGD only
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)  # Adam, Adamax

    @property
    def attack(self) -> str:
        """The attack's name in the search: loss-optimiser-scheduler."""
        return f"{self.loss}-{self.optimizer}-{self.scheduler}"

    def describe(self) -> str:
        extra = (
            f"momentum {self.momentum:.3g}, dampening {self.dampening:.3g}"
            if self.optimizer == "sgd"
            else f"betas {self.betas[0]:.3g}/{self.betas[1]:.3g}"
        )
        return f"{self.attack}: lr {self.lr:.3g}, {extra}, weight decay {self.weight_decay:.3g}"


def _host_side(classifier_cls):
    """secml-torch 1.5's FMN keeps its best distances and ε radii on the CPU whatever the model's
    device, and fails on CUDA ("Expected all tensors to be on the same device", first seen on an
    H200): the attack's state stays on the CPU and only the model's passes run on its device."""

    class HostSide(classifier_cls):
        def _decision_function(self, x: torch.Tensor) -> torch.Tensor:
            return self._model(x.to(next(self._model.parameters()).device)).cpu()

    return HostSide


def fmn(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: str,
    steps: int,
    step_size: float,
    target: int | None = None,
    batch_size: int = 500,
    config: FMNConfig | None = None,
):
    """Fast Minimum-Norm attack (Pintor et al. 2021) via secml-torch's native FMN.

    Untargeted (target=None): the smallest perturbation that changes the prediction away from y.
    Targeted (target=c, one class for the batch): the smallest perturbation that makes it predict c.
    Returns (distance, found, x_adv). A failed search returns the input itself, so `found` is checked
    on the returned point and `distance` is NaN where nothing was found (never a fake 0).
    `config`: one of HO-FMN's attacks (FMNConfig) instead of plain FMN.
    """
    from secmlt.adv.evasion.fmn import FMN
    from secmlt.models.pytorch.base_pytorch_nn import BasePyTorchClassifier
    from torch.utils.data import DataLoader, TensorDataset

    model.eval()
    perturbation = {"Linf": "linf", "L2": "l2", "L1": "l1"}[norm]
    device = next(model.parameters()).device
    classifier, x_adv = _host_side(BasePyTorchClassifier)(model), []
    for start in range(0, len(y), batch_size):
        # a fresh attack per batch: secml-torch 1.x keeps per-batch state sized by the first
        # batch and fails on a shorter last one (tests/test_evaluation.py)
        attack = FMN(
            perturbation_model=perturbation,
            num_steps=steps,
            step_size=step_size,
            y_target=target,
            backend="native",
        )
        if config is not None:
            _configure(attack, config, steps)
        chunk = slice(start, start + batch_size)
        loader = DataLoader(TensorDataset(x[chunk].cpu(), y[chunk].cpu()), batch_size=batch_size)
        x_adv += [adv.detach().cpu() for adv, _ in attack(classifier, loader, stream=True)]
    x_adv = torch.cat(x_adv)
    with torch.no_grad():
        pred = model(x_adv.to(device)).argmax(1).cpu()
    found = (pred == target) if target is not None else (pred != y)
    distance = lp_norm(x_adv - x, norm)
    distance[~found] = float("nan")
    return distance, found, x_adv


def _configure(attack, config: FMNConfig, steps: int) -> None:
    """Make a secml-torch FMN the authors' modular FMN with `config` (its modular attack reads
    these attributes when it runs: optimizer_cls([delta], lr=step_size, **optim_kwargs), the
    scheduler, the loss maximised per sample, the gradient processing). secml-torch steps along
    the L2-normalised gradient; HO-FMN along its sign (src/attacks/fmn.py FMN.forward), which for
    every norm is what its search space's step sizes are for. The rest (the eps-ball's
    adaptation, the best point kept) is secml-torch's FMN."""
    from secmlt.optimization.gradient_processing import LinearProjectionGradientProcessing
    from secmlt.optimization.losses import LogitDifferenceLoss
    from secmlt.optimization.scheduler_factory import NoScheduler

    losses = {"logit": LogitDifferenceLoss(reduction="none"), "ce": nn.CrossEntropyLoss(reduction="none")}
    attack.loss_function = losses.get(config.loss) or DLRLoss()
    attack.gradient_processing = LinearProjectionGradientProcessing("linf")  # the sign
    attack.step_size = config.lr
    common = dict(weight_decay=config.weight_decay)
    if config.optimizer == "sgd":
        attack.optimizer_cls = torch.optim.SGD
        attack.optim_kwargs = dict(momentum=config.momentum, dampening=config.dampening, **common)
    else:
        attack.optimizer_cls = {"adam": torch.optim.Adam, "adamax": torch.optim.Adamax}[config.optimizer]
        attack.optim_kwargs = dict(betas=config.betas, **common)
    if config.scheduler == "calr":  # search_space.py SCHEDULER_PARAMS["CALR"]: T_max steps, eta_min 0
        attack.scheduler_cls = torch.optim.lr_scheduler.CosineAnnealingLR
        attack.scheduler_kwargs = {"T_max": steps, "eta_min": 0.0}
    else:
        attack.scheduler_cls, attack.scheduler_kwargs = NoScheduler, {}
