"""Transfer attacks (compressed-models benchmark, arXiv 2308.08160, Sec. 4.3): adversarial examples
crafted on a base (dense) model and evaluated on its pruned children and on other architectures.

One function per attack, tensors in and out, from maintained libraries: FGSM, BIM, PGD (secml-torch,
Foolbox backend), APGD-CE (pyautoattack), CW-L2 and DeepFool-L2 (secml-torch, Foolbox backend; both
minimum-norm, so unbounded, their median L2 norm is reported), and a universal perturbation
(adversarial-robustness-toolbox, one Linf perturbation for every sample).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import torch
from torch import nn

TRANSFER_ATTACKS = ("fgsm", "bim", "pgd", "apgd", "cw", "deepfool", "universal")
UNBOUNDED_ATTACKS = ("cw", "deepfool")  # minimum-norm: not held within the threat ε


def _secml(attack, model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size=250) -> torch.Tensor:
    from secmlt.models.pytorch.base_pytorch_nn import BasePyTorchClassifier
    from torch.utils.data import DataLoader, TensorDataset

    loader = DataLoader(TensorDataset(x, y), batch_size=batch_size)
    return torch.cat([adv.detach().cpu() for adv, _ in attack(BasePyTorchClassifier(model), loader)])


def fgsm(model, x, y, eps: float, **_):
    from secmlt.adv.evasion.fgsm import FGSM

    return _secml(FGSM(perturbation_model="linf", epsilon=eps, backend="foolbox"), model, x, y)


def bim(model, x, y, eps: float, steps: int = 10, **_):
    """BIM (Kurakin et al. 2017) is PGD without the random start."""
    return pgd(model, x, y, eps, steps, random_start=False)


def pgd(model, x, y, eps: float, steps: int = 10, random_start: bool = True, **_):
    from secmlt.adv.evasion.pgd import PGD

    attack = PGD(
        perturbation_model="linf",
        epsilon=eps,
        num_steps=steps,
        step_size=eps / 4,
        random_start=random_start,
        backend="foolbox",
    )
    return _secml(attack, model, x, y)


def apgd(model, x, y, eps: float, steps: int = 100, seed: int = 0, **_):
    from pyautoattack.autopgd_base import APGDAttack

    device = next(model.parameters()).device
    attack = APGDAttack(
        model, norm="Linf", eps=eps, n_iter=steps, n_restarts=1, loss="ce", seed=seed, device=device
    )
    # the highest-loss point of every sample, not only the successful ones: what transfers
    return attack.perturb(x.to(device), y.to(device), best_loss=True).detach().cpu()


def cw(model, x, y, steps: int = 100, confidence: float = 5.0, **_):
    """CW-L2 with a confidence margin: high-confidence examples are the ones that transfer
    (Carlini & Wagner 2017, Sec. 8)."""
    from secmlt.adv.evasion.cw import CW

    attack = CW(binary_search_steps=5, num_steps=steps, confidence=confidence, backend="foolbox")
    return _secml(attack, model, x, y)


def deepfool(model, x, y, steps: int = 50, **_):
    from secmlt.adv.evasion.deepfool import DeepFool

    return _secml(DeepFool(num_steps=steps, overshoot=0.02, backend="foolbox"), model, x, y)


def universal(model, x, y, eps: float, steps: int = 5, **_):
    """One perturbation for all samples (Moosavi-Dezfooli et al. 2017), FGSM as the inner attack."""
    from art.attacks.evasion import UniversalPerturbation
    from art.estimators.classification import PyTorchClassifier

    device = next(model.parameters()).device
    classifier = PyTorchClassifier(
        model,
        loss=nn.CrossEntropyLoss(),
        input_shape=tuple(x.shape[1:]),
        nb_classes=int(model(x[:1].to(device)).shape[1]),
        clip_values=(0.0, 1.0),
        device_type="gpu" if device.type == "cuda" else "cpu",
    )
    attack = UniversalPerturbation(
        classifier,
        attacker="fgsm",
        attacker_params={"eps": eps},
        delta=0.2,
        max_iter=steps,
        eps=eps,
        norm=np.inf,
        batch_size=250,
        verbose=False,
    )
    attack.generate(x.numpy(), y=np.eye(classifier.nb_classes)[y.numpy()])
    noise = torch.as_tensor(attack.noise, dtype=x.dtype)
    return (x + noise.reshape(1, *x.shape[1:])).clamp(0, 1)


ATTACKS: dict[str, Callable] = {
    "fgsm": fgsm,
    "bim": bim,
    "pgd": pgd,
    "apgd": apgd,
    "cw": cw,
    "deepfool": deepfool,
    "universal": universal,
}


def proportion_interval(successes: int, n: int) -> tuple[float, float]:
    """95 % Wilson score interval of an accuracy (good coverage at any n and near 0 or 1)."""
    from scipy.stats import binomtest

    ci = binomtest(successes, n).proportion_ci(confidence_level=0.95, method="wilson")
    return float(ci.low), float(ci.high)


@torch.inference_mode()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> np.ndarray:
    """Per-sample correctness of a model on x."""
    device = next(model.parameters()).device
    out = [model(x[i : i + batch_size].to(device)).argmax(1).cpu() for i in range(0, len(x), batch_size)]
    return (torch.cat(out) == y).numpy()


def craft(
    attack: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, seed: int = 0
) -> torch.Tensor:
    if attack not in ATTACKS:
        raise ValueError(f"transfer attack '{attack}' unknown; allowed: {', '.join(ATTACKS)}")
    torch.manual_seed(seed)
    model.eval()
    return ATTACKS[attack](model, x, y, eps=eps, seed=seed).detach().cpu()


def transfer_rows(
    source_id: str,
    attack: str,
    x: torch.Tensor,
    x_adv: torch.Tensor,
    y: torch.Tensor,
    targets: dict[str, nn.Module],
) -> list[dict]:
    """Accuracy of every target on the source's adversarial examples, next to its clean accuracy.
    `fooled` counts only samples the target classified correctly when clean."""
    delta = (x_adv - x).flatten(1)
    rows = []
    for target_id, model in targets.items():
        clean = accuracy(model, x, y)
        adv = accuracy(model, x_adv, y)
        low, high = proportion_interval(int(adv.sum()), len(y))
        rows.append(
            {
                "source": source_id,
                "attack": attack,
                "target": target_id,
                "white_box": target_id == source_id,
                "samples": len(y),
                "clean_acc": clean.mean(),
                "adv_acc": adv.mean(),
                "adv_acc_low": low,
                "adv_acc_high": high,
                "fooled": float((clean & ~adv).sum() / max(1, clean.sum())),
                "linf_median": float(delta.abs().amax(1).median()),
                "l2_median": float(delta.norm(dim=1).median()),
            }
        )
    return rows


def transfer_table(
    sources: dict[str, nn.Module],
    targets: dict[str, nn.Module],
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    attacks=TRANSFER_ATTACKS,
    seed: int = 0,
    log=print,
) -> pd.DataFrame:
    """Every (source, attack, target) cell; sources are usually the dense base models."""
    rows = []
    for source_id, model in sources.items():
        for attack in attacks:
            log(f"[transfer] {attack} on {source_id} ({len(y)} samples)")
            x_adv = craft(attack, model, x, y, eps, seed)
            rows += transfer_rows(source_id, attack, x, x_adv, y, targets)
    return pd.DataFrame(rows)
