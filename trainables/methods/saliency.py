"""MAD's adversarial saliency (Lee et al. 2022, "Masking Adversarial Damage", CVPR; the authors'
ByungKwanLee/Masking-Adversarial-Damage, pruner/kfac_MAD_pruner.py, utils/kfac_utils.py,
compute_saliency.py).

For each batch of training samples: PGD examples of the trained network; a soft mask f(m) per
weight (f = softplus, m from f^-1(1)) optimised by Adam to lower the adversarial loss with the
weights fixed; then the second-order change of that loss if the masked-out part of each weight,
dw = w (1 - f(m)), were removed: 1/2 dw^T H dw with H a per-layer Kronecker factorisation
A (x) G of the Fisher (K-FAC), of which the authors keep G's diagonal (their block-wise K-FAC):

    saliency[i, j] = 1/2 G[i, i] dw[i, j] (dw[i, :] A)[j]

averaged over the batches. Weights of low saliency are pruned.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from apgrid.trainables.attacks import pgd
from apgrid.trainables.fields import Number, Whole
from apgrid.trainables.masks import apply_masks, prunable_layers
from apgrid.trainables.methods.base import PruningMethod, register
from apgrid.trainables.methods.recipes import mad

if TYPE_CHECKING:
    from apgrid.trainables.pipeline import PruneJob

MASK_ONE = math.log(math.e - 1)  # softplus^-1(1): the mask starts at 1
MASK_ZERO = math.log(math.expm1(1e-4))  # softplus^-1(0.0001): f_inv(0) in models/operator/mask.py


def kfac_factors(module: nn.Module, inputs: torch.Tensor, grad_output: torch.Tensor):
    """K-FAC's input and output-gradient covariances of one layer (ComputeCovA / ComputeCovG, batch
    averaged), a column of ones for the bias; rows and columns in weight.view(out, -1)'s order."""
    n = inputs.shape[0]
    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            raise ValueError("MAD's K-FAC factors need convolutions without groups")
        patches = F.unfold(inputs, module.kernel_size, module.dilation, module.padding, module.stride)
        spatial = patches.shape[-1]
        a = patches.transpose(1, 2).reshape(-1, patches.shape[1])
        if module.bias is not None:
            a = torch.cat([a, a.new_ones(len(a), 1)], 1)
        a = a / spatial
        g = grad_output.permute(0, 2, 3, 1).reshape(-1, grad_output.shape[1]) * n * spatial
        return a.T @ (a / n), g.T @ (g / len(g))
    a = inputs if module.bias is None else torch.cat([inputs, inputs.new_ones(n, 1)], 1)
    return a.T @ (a / n), grad_output.T @ (grad_output * n)


def saliency_of(weight: torch.Tensor, kept: torch.Tensor, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """1/2 G_ii dw_ij (dw_i A)_j for dw = w (1 - kept), weight and kept as (out, in [+ 1 bias])."""
    dw = weight * (1 - kept)
    return 0.5 * torch.diagonal(g)[:, None] * dw * (dw @ a)


def _as_matrix(weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    w = weight.reshape(weight.shape[0], -1)
    return w if bias is None else torch.cat([w, bias[:, None]], 1)


def batch_saliency(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str,
    pgd_steps: int = 10,
    mask_steps: int = 20,
    mask_lr: float = 0.1,
) -> dict[str, torch.Tensor]:
    """One batch's adversarial saliency of every prunable layer's weights (as the weights' shape)."""
    model.eval()
    noise = (torch.rand_like(x) * 2 - 1) * eps  # torchattacks PGD: random start, step 2.3 eps / steps
    x_adv = pgd(
        model, x, y, eps=eps, steps=pgd_steps, step_size=2.3 * eps / pgd_steps, norm=norm, init_noise=noise
    )
    layers = prunable_layers(model)
    masks = {}
    for name, m in layers:
        masks[f"{name}.weight"] = torch.full_like(m.weight, MASK_ONE, requires_grad=True)
        if m.bias is not None:
            masks[f"{name}.bias"] = torch.full_like(m.bias, MASK_ONE, requires_grad=True)
    params = dict(model.named_parameters())

    def masked_forward(inputs):
        masked = {key: params[key].detach() * F.softplus(mask) for key, mask in masks.items()}
        return functional_call(model, masked, (inputs,))

    optimizer = torch.optim.Adam(masks.values(), lr=mask_lr)  # compute_saliency.py: Adam, lr 0.1
    for _ in range(mask_steps):
        optimizer.zero_grad()
        F.cross_entropy(masked_forward(x_adv), y).backward()
        optimizer.step()
        with torch.no_grad():
            for mask in masks.values():
                mask.clamp_(MASK_ZERO, MASK_ONE)
    captured: dict[str, list] = {}

    def keep_input(name):
        def hook(module, inputs):
            captured[name] = [inputs[0].detach()]

        return hook

    def keep_grad(name):
        def hook(module, grad_input, grad_output):
            captured[name].append(grad_output[0].detach())

        return hook

    hooks = []
    for name, m in layers:
        hooks.append(m.register_forward_pre_hook(keep_input(name)))
        hooks.append(m.register_full_backward_hook(keep_grad(name)))
    try:  # the input needs a gradient for the first layer's backward hook to see its output's
        F.cross_entropy(masked_forward(x_adv.requires_grad_(True)), y).backward()
    finally:
        for h in hooks:
            h.remove()
    out = {}
    for name, m in layers:
        a, g = kfac_factors(m, *captured[name])
        bias_mask = masks.get(f"{name}.bias")
        weight = _as_matrix(m.weight.detach(), None if m.bias is None else m.bias.detach())
        kept = _as_matrix(
            F.softplus(masks[f"{name}.weight"].detach()),
            None if bias_mask is None else F.softplus(bias_mask.detach()),
        )
        out[name] = saliency_of(weight, kept, a, g)[:, : m.weight[0].numel()].reshape(m.weight.shape)
    return out


def least_salient_first(saliency: torch.Tensor, weight: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Indices by ascending saliency; ties (every weight its mask kept whole scores exactly 0) by
    ascending |w|. The authors' sort leaves ties in whatever order the device returns, which on a
    CPU is index order and removes whole leading filters: apgrid breaks them by magnitude."""
    by_magnitude = weight.detach().abs().argsort(dim=dim)
    return by_magnitude.gather(dim, saliency.gather(dim, by_magnitude).argsort(dim=dim, stable=True))


def mad_masks(
    saliency: dict[str, torch.Tensor], model: nn.Module, sparsity: float
) -> dict[str, torch.Tensor]:
    """The authors' _global_remove_weight: every layer but the last (utils/utils.py list_to_concat:
    adv_delta_L_avg[:-1]) ranked together, its lowest-saliency `sparsity` share removed; each row
    of the last layer (the classifier) pruned at `sparsity` on its own."""
    masks = {}
    layers = prunable_layers(model)
    ranked, (last_name, last) = layers[:-1], layers[-1]
    if ranked:
        flat = torch.cat([saliency[n].flatten() for n, _ in ranked])
        weights = torch.cat([m.weight.flatten() for _, m in ranked])
        keep = torch.ones_like(flat)
        keep[least_salient_first(flat, weights)[: int(sparsity * len(flat))]] = 0.0
        for (n, m), chunk in zip(ranked, keep.split([m.weight.numel() for _, m in ranked])):
            masks[n] = chunk.view_as(m.weight)
    rows = saliency[last_name].reshape(len(last.weight), -1)
    keep = torch.ones_like(rows)
    cut = int(sparsity * rows.shape[1])
    keep.scatter_(1, least_salient_first(rows, last.weight.reshape(len(rows), -1), dim=1)[:, :cut], 0.0)
    masks[last_name] = keep.view_as(last.weight)
    return masks


@register
class Mad(PruningMethod):
    """MAD as the authors prune (compute_saliency.py, main_mad_pretrain.py; batch_saliency above):
    one pass over the training set, each batch's PGD examples, a soft mask per weight optimised
    for 20 Adam steps (lr 0.1) to lower their loss, the K-FAC second-order saliency of what the
    mask removes, averaged; then the lowest-saliency weights of every layer but the last pruned by
    one global ranking (the classifier row by row) and the network fine-tuned with MART."""

    name, pipeline, scope = "mad", "A", "global"
    recipe = mad.RECIPE
    implemented = (
        "Lee et al. 2022 and its code: per training batch, PGD-10 examples, a softplus soft mask per "
        "weight optimised by Adam (lr 0.1, 20 steps) on their loss, the K-FAC saliency ½ G_ii Δw_ij (Δw_i"
        " A)_j of what the mask removes, averaged; every layer but the last ranked globally, each row of the"
        " last on its own; fine-tuning with MART (β 0.5) on their schedule (`samples` limits the pass)"
    )
    omitted = (
        "the last layer's bias stays dense (the reference ranks it with its row); ties (saliency exactly 0) "
        "broken by weight magnitude, not the device's sort order"
    )
    criterion = "adversarial second-order saliency (K-FAC)"
    description = (
        "MAD (Lee et al. 2022): rank weights by the second-order change of the adversarial loss "
        "when their learned soft mask removes them (K-FAC Hessian), prune the least salient "
        "globally in one shot, then fine-tune with MART"
    )
    # compute_saliency.py: --steps 10 (PGD), mask_epoch=20, Adam lr 0.1; samples 0: the whole set
    options = {
        "pgd_steps": Whole(10, 1),
        "mask_steps": Whole(20, 1),
        "mask_lr": Number(0.1, 0.0, 10.0),
        "samples": Whole(0, 0),
        "batch_size": Whole(128, 1),
    }

    def prune(self, job: PruneJob) -> None:
        o = job.options
        x, y = job.ds.x_train, job.ds.y_train
        if o["samples"]:
            x, y = x[: o["samples"]], y[: o["samples"]]
        torch.manual_seed(job.s.seed)
        starts = range(0, len(y), o["batch_size"])
        total: dict[str, torch.Tensor] = {}
        for start in starts:
            xb = x[start : start + o["batch_size"]].to(job.device)
            yb = y[start : start + o["batch_size"]].to(job.device)
            batch = batch_saliency(
                job.model,
                xb,
                yb,
                eps=job.s.eps,
                norm=job.s.norm,
                pgd_steps=o["pgd_steps"],
                mask_steps=o["mask_steps"],
                mask_lr=o["mask_lr"],
            )
            for name, s in batch.items():
                total[name] = total.get(name, 0) + s / len(starts)
        apply_masks(job.model, mad_masks(total, job.model, job.s.sparsity))
