"""ADMM pruning under adversarial loss: R-ADMM (Ye et al., ICCV 2019) and ATMC (Gui et al., NeurIPS 2019).

Both solve  min_W L_adv(W)  s.t.  W in S  by splitting W = Z (Ye et al. 2019, Sec. 3.2):
    W-step: SGD on L_adv(W) + sum_l rho/2 ||W_l - Z_l + U_l||^2   (one epoch)
    Z-step: Z_l = Proj_S(W_l + U_l)
    U-step: U_l = U_l + W_l - Z_l
R-ADMM's S is the set of sparse weights (irregular: at most k non-zeros; filter: at most k non-zero
filters); after its ADMM phase the weights are hard-pruned to the support of Proj_S(W) and
retrained under the mask. ATMC (Gui et al. 2019, Sec. 3, Eq. 4; VITA-Group/ATMC) projects onto the
global sparse set after every step and puts the k-bit quantisation in the ADMM split instead
(trainables/methods.py Atmc, with project_global and quantize_kmeans here).
"""

from __future__ import annotations

import torch
from torch import nn

from apgrid.trainables.pruning import kept_count, prunable_layers


def project_irregular(w: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Euclidean projection onto {at most k non-zeros}: keep the k largest |w|."""
    keep = torch.zeros(w.numel(), device=w.device)
    keep[w.abs().flatten().topk(kept_count(w.numel(), sparsity)).indices] = 1.0
    return w * keep.view_as(w)


def project_filters(w: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Projection onto {at most k non-zero filters}: keep the k output filters of largest L2 norm."""
    norms = w.flatten(1).norm(dim=1)
    keep = torch.zeros(len(norms), device=w.device)
    keep[norms.topk(kept_count(len(norms), sparsity)).indices] = 1.0
    return w * keep.view(-1, *([1] * (w.dim() - 1)))


def kmeans_levels(values: torch.Tensor, levels: int, iterations: int = 20) -> torch.Tensor:
    """1-D k-means (Lloyd) centres of `values`, started from their quantiles (deterministic where
    ATMC's utee/kmeans.py draws its start at random)."""
    values = values.flatten().float()
    if values.numel() <= levels:
        return values.unique()
    centers = torch.quantile(values, torch.linspace(0, 1, levels, device=values.device))
    for _ in range(iterations):
        choice = (values[:, None] - centers[None, :]).abs().argmin(1)
        sums = torch.zeros_like(centers).index_add_(0, choice, values)
        counts = torch.zeros_like(centers).index_add_(0, choice, torch.ones_like(values))
        moved = torch.where(counts > 0, sums / counts.clamp_min(1), centers)
        if torch.allclose(moved, centers):
            break
        centers = moved
    return centers


def snap(w: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """Non-zero weights to their nearest centre; zeros stay zero (ATMC's fixed 0 centre)."""
    nearest = centers[(w.reshape(-1, 1) - centers[None, :]).abs().argmin(1)].view_as(w)
    return torch.where(w != 0, nearest, torch.zeros_like(w))


def quantize_kmeans(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ATMC's quantisation (utee/quantize.py quantize_kmeans_nnz_fixed_0_center): k-means levels
    fitted to the non-zero weights, zero kept as a fixed level; 2^bits - 1 non-zero levels plus zero
    so that every weight fits in `bits` bits. Returns (quantised weights, the layer's codebook)."""
    nonzero = w[w != 0]
    if nonzero.numel() == 0:
        return w.clone(), torch.zeros(1, device=w.device)
    centers = kmeans_levels(nonzero, 2**bits - 1)
    return snap(w, centers), centers


def make_projection(sparsity_type: str = "irregular"):
    """R-ADMM's Proj_S: onto at most k non-zero weights, or k non-zero filters."""

    def project(w: torch.Tensor, sparsity: float) -> torch.Tensor:
        return project_filters(w, sparsity) if sparsity_type == "filter" else project_irregular(w, sparsity)

    return project


@torch.no_grad()
def project_global(layers: list[nn.Module], sparsity: float) -> None:
    """ATMC's l0proj (utee/pruning_tools.py): one magnitude ranking across all layers, keeping the
    round(N (1 - sparsity)) largest |w| of the N weights; per-layer sparsities follow from it."""
    weights = [m.weight for m in layers]
    flat = torch.cat([w.flatten() for w in weights])
    keep = round(flat.numel() * (1 - sparsity))
    if keep >= flat.numel():
        return
    cut = flat.abs().topk(flat.numel() - keep, largest=False).indices
    flat[cut] = 0.0
    for w, chunk in zip(weights, flat.split([w.numel() for w in weights])):
        w.copy_(chunk.view_as(w))


def admm_layers(model: nn.Module, sparsity_type: str, layers: str = "all") -> list[tuple[str, nn.Module]]:
    """The constrained layers: convolutions only for filter sparsity (a linear classifier keeps
    all its classes) or `layers: conv` (R-ADMM's configs prune conv layers only), else every
    conv and linear layer."""
    conv_only = sparsity_type == "filter" or layers == "conv"
    return [(n, m) for n, m in prunable_layers(model) if not conv_only or isinstance(m, nn.Conv2d)]


class Admm:
    """The Z and U variables of every constrained layer, and the three ADMM updates."""

    def __init__(
        self,
        model: nn.Module,
        sparsity: float,
        layer_sparsity: dict[str, float],
        rho: float,
        project,
        sparsity_type: str = "irregular",
        layers: str = "all",
        rho_factor: float = 1.0,
    ):
        self.layers = admm_layers(model, sparsity_type, layers)
        self.sparsity = {n: layer_sparsity.get(n, sparsity) for n, _ in self.layers}
        self.rho, self.rho_factor, self.project = rho, rho_factor, project
        self.z = {n: project(m.weight.detach(), self.sparsity[n]) for n, m in self.layers}
        self.u = {n: torch.zeros_like(m.weight) for n, m in self.layers}

    def penalty(self) -> torch.Tensor:
        """sum_l rho/2 ||W_l - Z_l + U_l||^2, added to the adversarial loss in the W-step."""
        return sum(0.5 * self.rho * (m.weight - self.z[n] + self.u[n]).pow(2).sum() for n, m in self.layers)

    @torch.no_grad()
    def update(self) -> float:
        """Z- and U-steps, then rho *= rho_factor (R-ADMM's multi-rho scheduler: "it works better
        to make rho monotonically increasing", admm/admm.py); returns the primal residual
        sum_l ||W_l - Z_l||^2, which ADMM drives towards 0."""
        residual = 0.0
        for n, m in self.layers:
            self.z[n] = self.project(m.weight + self.u[n], self.sparsity[n])
            self.u[n] += m.weight - self.z[n]
            residual += float((m.weight - self.z[n]).pow(2).sum())
        self.rho *= self.rho_factor
        return residual

    def residual(self) -> float:
        """sum_l ||W_l - Z_l||^2 at the current weights."""
        with torch.no_grad():
            return sum(float((m.weight - self.z[n]).pow(2).sum()) for n, m in self.layers)

    def hard_masks(self) -> dict[str, torch.Tensor]:
        """The support of Proj_S(W): the masks of the retraining phase."""
        return {n: (self.project(m.weight.detach(), self.sparsity[n]) != 0).float() for n, m in self.layers}

    def state(self) -> dict:
        return {
            "z": {n: t.cpu() for n, t in self.z.items()},
            "u": {n: t.cpu() for n, t in self.u.items()},
            "rho": self.rho,
        }

    def load(self, state: dict, device) -> None:
        self.z = {n: t.to(device) for n, t in state["z"].items()}
        self.u = {n: t.to(device) for n, t in state["u"].items()}
        self.rho = state.get("rho", self.rho)


def model_size_bits(model: nn.Module, bits: int = 32) -> int:
    """Storage of the non-zero prunable weights at `bits` each, plus one 32-bit scale per layer
    when quantised; everything else (biases, batch norm) at 32 bits. Index overhead is left out."""
    from apgrid.trainables.pruning import plain_state_dict

    state = plain_state_dict(model)
    prunable = {f"{n}.weight" for n, _ in prunable_layers(model)}
    total = 0
    for name, _ in model.named_parameters():
        name = name.removesuffix("_orig")
        nonzero = int((state[name] != 0).sum())
        total += nonzero * bits + (32 if bits < 32 else 0) if name in prunable else nonzero * 32
    return total
