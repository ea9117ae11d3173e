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


def hsic_normalized_cca(
    x: torch.Tensor, y: torch.Tensor, sigma: float, kind_y: str = "gaussian"
) -> torch.Tensor:
    """sum(Rx * Ry^T), R = Kc (Kc + 1e-5 m I)^-1."""
    kx, ky = centred_kernel(x, sigma), centred_kernel(y, sigma, kind_y)
    ridge = 1e-5 * len(kx) * torch.eye(len(kx), device=kx.device)
    rx = kx @ torch.linalg.inv(kx + ridge)
    ry = ky @ torch.linalg.inv(ky + ridge)
    return (rx * ry.T).sum()
