"""The HSIC bottleneck's normalised-CCA HSIC (Ma et al. 2020; as PwoA uses it, neu-spiral/PwoA
source/hsicbt/core/train_misc.py hsic_objective and the HSIC-bottleneck's math/hsic.py)."""

from __future__ import annotations

import torch


def centred_kernel(x: torch.Tensor, sigma: float, kind: str = "gaussian") -> torch.Tensor:
    """K H with H = I - 11^T/m: a Gaussian kernel of variance 2 sigma^2 d (kernelmat), or linear."""
    x = x.flatten(1).float()
    if kind == "linear":
        k = x @ x.T
    else:
        k = torch.exp(-torch.cdist(x, x).pow(2) / (2 * sigma * sigma * x.shape[1]))
    return k - k.mean(dim=1, keepdim=True)  # K H without building H


def resolvent(x: torch.Tensor, sigma: float, kind: str = "gaussian") -> torch.Tensor:
    """R = Kc (Kc + 1e-5 m I)^-1 of one variable: computed once, it serves every HSIC it is in."""
    k = centred_kernel(x, sigma, kind)
    return k @ torch.linalg.inv(k + 1e-5 * len(k) * torch.eye(len(k), device=k.device))


def hsic_from(rx: torch.Tensor, ry: torch.Tensor) -> torch.Tensor:
    """sum(Rx * Ry^T): the normalised-CCA HSIC of two variables' resolvents."""
    return (rx * ry.T).sum()


def hsic_normalized_cca(
    x: torch.Tensor, y: torch.Tensor, sigma: float, kind_y: str = "gaussian"
) -> torch.Tensor:
    return hsic_from(resolvent(x, sigma), resolvent(y, sigma, kind_y))
