"""ADMM pruning under adversarial loss: R-ADMM (Ye et al., ICCV 2019) and ATMC (Gui et al., NeurIPS 2019).

Both solve  min_W L_adv(W)  s.t.  W in S  by splitting W = Z (Ye et al. 2019, Sec. 3.2):
    W-step: SGD on L_adv(W) + sum_l rho/2 ||W_l - Z_l + U_l||^2   (one epoch)
    Z-step: Z_l = Proj_S(W_l + U_l)
    U-step: U_l = U_l + W_l - Z_l
R-ADMM's S is the set of sparse weights (irregular: at most k non-zeros; filter: at most k non-zero
filters); after its ADMM phase the weights are hard-pruned to the support of Proj_S(W) and
retrained under the mask. ATMC (Gui et al. 2019, Sec. 3, Eq. 4; VITA-Group/ATMC) projects onto the
global sparse set after every step and puts the k-bit quantisation in the ADMM split instead
(Atmc below, with project_global and quantize_kmeans).
"""

from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from apgrid.trainables.fields import Choice, LayerSparsity, Number, Whole
from apgrid.trainables.masks import apply_masks, kept_count, prunable_layers
from apgrid.trainables.methods.base import PruningMethod, Search, cpu_state, register
from apgrid.trainables.methods.recipes import atmc, pwoa, r_admm
from apgrid.trainables.models import BasicBlock, Bottleneck, CifarResNet, WideBlock, WideResNet
from apgrid.trainables.training import LayeredHooks, Recipe, TrainingHooks

if TYPE_CHECKING:
    from apgrid.trainables.pipeline import PruneJob


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
        rho_max: float = math.inf,
    ):
        self.layers = admm_layers(model, sparsity_type, layers)
        self.sparsity = {n: layer_sparsity.get(n, sparsity) for n, _ in self.layers}
        self.rho, self.rho_factor, self.project = rho, rho_factor, project
        self.rho_max = rho_max
        self.z = {n: project(m.weight.detach(), self.sparsity[n]) for n, m in self.layers}
        self.u = {n: torch.zeros_like(m.weight) for n, m in self.layers}

    def penalty(self) -> torch.Tensor:
        """sum_l rho/2 ||W_l - Z_l + U_l||^2, added to the adversarial loss in the W-step."""
        return sum(0.5 * self.rho * (m.weight - self.z[n] + self.u[n]).pow(2).sum() for n, m in self.layers)

    @torch.no_grad()
    def update(self) -> float:
        """Z- and U-steps, then rho *= rho_factor up to rho_max (R-ADMM's multi-rho scheduler: "it
        works better to make rho monotonically increasing", admm/admm.py; PwoA's caps it at 1);
        returns the primal residual sum_l ||W_l - Z_l||^2, which ADMM drives towards 0."""
        residual = 0.0
        for n, m in self.layers:
            self.z[n] = self.project(m.weight + self.u[n], self.sparsity[n])
            self.u[n] += m.weight - self.z[n]
            residual += float((m.weight - self.z[n]).pow(2).sum())
        self.rho = min(self.rho * self.rho_factor, self.rho_max)
        return residual

    @torch.no_grad()
    def reset_z(self) -> None:
        """Z = Proj_S(W), U kept (PwoA's admm_initialization at the start of every epoch)."""
        self.z = {n: self.project(m.weight.detach(), self.sparsity[n]) for n, m in self.layers}

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


# -- PwoA's HSIC bottleneck ------------------------------------------------------------------


# The HSIC bottleneck's normalised-CCA HSIC (Ma et al. 2020; as PwoA uses it, neu-spiral/PwoA
# source/hsicbt/core/train_misc.py hsic_objective and the HSIC-bottleneck's math/hsic.py).


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


class AdmmSearch(Search):
    """R-ADMM's ADMM phase (and PwoA's, under its distillation): the W-step is the epoch's training
    with the penalty, Z and U move every `admm_epoch` epochs; then the hard masks."""

    def __init__(self, job: PruneJob, saved: dict | None, admm: Admm):
        if saved:
            job.model.load_state_dict(saved["model"])
            admm.load(saved["admm"], job.device)
        super().__init__(job, job.model.parameters())
        self.admm = admm

    def learning_rate(self, recipe: Recipe, epoch: int) -> float:
        """R-ADMM's admm_adjust_learning_rate: the search lr at each Z/U update, then a tenth
        after every third of admm_epoch."""
        every = self.job.options["admm_epoch"]
        return recipe.lr * 0.1 ** ((epoch % every) // (every / 3))

    def penalty(self):
        return self.admm.penalty()

    def end_epoch(self, epoch: int, metrics: dict) -> None:
        if (epoch + 1) % self.job.options["admm_epoch"] == 0:  # the reference: every admm_epoch epochs
            metrics["admm_residual"] = self.admm.update()
            metrics["admm_rho"] = self.admm.rho
        else:
            metrics["admm_residual"] = self.admm.residual()

    def state(self) -> dict:
        return {"model": cpu_state(self.job.model), "admm": self.admm.state()}

    def finish(self) -> None:
        apply_masks(self.job.model, self.admm.hard_masks())


def _output(inputs, output):
    return output


def _input(inputs, output):
    return inputs[0]


def _relu_of_output(inputs, output):
    return torch.relu(output)


def hsic_taps(model: nn.Module) -> tuple[list[tuple[nn.Module, object]], bool]:
    """PwoA's Z of the HSIC bottleneck as (module, take(inputs, output)) forward-hook taps, and
    whether they are the authors' (neu-spiral/PwoA source/hsicbt/model/resnet.py and
    wideresnet.py forward output_list): the stem's output, every residual block's output and
    the pooled features (the classifier's input). A network without residual blocks (VGG, the
    small CNNs, DenseNet, MobileNet: apgrid's VGG is one flat `features` sequence) falls back to
    every conv and linear layer's output."""
    for net in model.modules():
        if isinstance(net, CifarResNet):  # stem relu(bn1(conv1 x)), computed functionally
            blocks = [m for m in net.modules() if isinstance(m, (BasicBlock, Bottleneck))]
            return [(net.bn1, _relu_of_output), *[(b, _output) for b in blocks], (net.linear, _input)], True
        if isinstance(net, WideResNet):  # stem conv1 x; pooled relu(bn1 x), the classifier's input
            blocks = [m for m in net.modules() if isinstance(m, WideBlock)]
            return [(net.conv1, _output), *[(b, _output) for b in blocks], (net.fc, _input)], True
    return [(m, _output) for _, m in prunable_layers(model)], False


class Distillation(TrainingHooks):
    """PwoA's loss on clean inputs: self-distillation from the dense model (taken when the job
    starts) plus the HSIC bottleneck on the network's representations (hsic_taps); the HSIC
    weights are the phase's (neu-spiral/PwoA core/train_hsic_prune.py hsic_prune: lambda_x /
    lambda_y in the ADMM phase, retrain_lx / retrain_ly under the masks)."""

    def __init__(self, job: PruneJob):
        self.options = job.options
        self.teacher = copy.deepcopy(job.model).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.outputs: list[torch.Tensor] = []
        taps, self.blocks = hsic_taps(job.model)
        for module, take in taps:
            module.register_forward_hook(self._tap(take))

    def _tap(self, take):
        def hook(module, inputs, output):
            if module.training:
                self.outputs.append(take(inputs, output))

        return hook

    def objective(self, model, x, y):
        """The retraining phase's loss (hsic_x, hsic_y)."""
        return self.loss(model, x, y, self.options["hsic_x"], self.options["hsic_y"])

    def loss(self, model, x, y, hsic_x: float, hsic_y: float):
        o = self.options
        self.outputs.clear()
        logits = model(x)
        with torch.no_grad():
            target = self.teacher(x)
        t = o["temperature"]
        distill = F.kl_div(  # KLDivLoss(log_target=True)'s default: the mean over every entry
            F.log_softmax(logits / t, 1), F.log_softmax(target / t, 1), reduction="none", log_target=True
        ).mean()
        total = o["distill_weight"] * t * t * distill
        if hsic_x or hsic_y:  # the input's and labels' resolvents serve every representation
            r_x = resolvent(x, o["sigma"])
            r_y = resolvent(F.one_hot(y, logits.shape[1]).float(), o["sigma"], "linear")
            for z in self.outputs:
                r_z = resolvent(z, o["sigma"])
                total = total + hsic_x * hsic_from(r_z, r_x) - hsic_y * hsic_from(r_z, r_y)
        return total, logits


class PwoaSearch(AdmmSearch):
    """PwoA's ADMM phase (neu-spiral/PwoA core/train_hsic_prune.py hsic_prune, math/admm.py):
    R-ADMM's, with the ADMM phase's HSIC weights (search_hsic_x, search_hsic_y: 0 in the authors'
    runs), and Z = Proj(W) again at the start of every epoch (admm_initialization, called by
    hsic_prune every epoch, before that epoch's Z/U update)."""

    def objective(self, model, x, y):
        o = self.job.options
        return self.base.loss(model, x, y, o["search_hsic_x"], o["search_hsic_y"])

    def end_epoch(self, epoch: int, metrics: dict) -> None:
        super().end_epoch(epoch, metrics)
        if "admm_rho" not in metrics:  # no Z/U update before the next epoch: Z = Proj(W)
            self.admm.reset_z()


def clean_share(recipe: Recipe, clean_weight: float) -> float:
    """The clean share ATMC's hooks mix in: none when the phase's trainer (pgd+clean/2, the
    recipe's) already mixes it, so the clean term is counted exactly once."""
    return 0.0 if recipe.trainer == "pgd+clean/2" else clean_weight


def with_clean(losses: torch.Tensor, model, x, y, clean_weight: float) -> torch.Tensor:
    """ATMC's loss in every stage (VITA-Group/ATMC cifar/util_trts.py
    model_train_proj_prune_admm_quant): (1 - w) CE(x_adv) + w CE(x), w = 0.5 there."""
    if not clean_weight:
        return losses
    clean = F.cross_entropy(model(x), y, reduction="none")
    return (1 - clean_weight) * losses + clean_weight * clean


class AtmcSearch(Search):
    """ATMC's training: half clean, half adversarial loss plus rho/2 ||W - Z + U||^2, the global
    sparse projection after every step, Z and U every `admm_interval` batches; then the
    quantised model under the masks of its support."""

    def __init__(self, job: PruneJob, saved: dict | None):
        self.layers = [m for _, m in prunable_layers(job.model)]
        self.z = [m.weight.detach().clone() for m in self.layers]
        self.u = [torch.zeros_like(m.weight) for m in self.layers]
        if saved:
            job.model.load_state_dict(saved["model"])
            self.z = [t.to(job.device) for t in saved["z"]]
            self.u = [t.to(job.device) for t in saved["u"]]
        super().__init__(job, job.model.parameters())
        o = job.options
        self.bits, self.rho, self.every = o["bits"], o["rho"], o["admm_interval"]
        self.clean_weight = clean_share(job.search, o["clean_weight"])

    def sample_losses(self, losses, model, x, y, idx):
        losses = with_clean(losses, model, x, y, self.clean_weight)
        return super().sample_losses(losses, model, x, y, idx)

    def penalty(self):
        if not self.bits:
            return 0.0
        layers, z, u = self.layers, self.z, self.u
        return sum(0.5 * self.rho * (m.weight - zi + ui).pow(2).sum() for m, zi, ui in zip(layers, z, u))

    @torch.no_grad()
    def after_step(self, batch: int) -> None:
        project_global(self.layers, self.job.s.sparsity)
        if self.bits and batch % self.every == 0 and batch > 0:
            for i, m in enumerate(self.layers):
                support = (m.weight != 0).to(m.weight.dtype)
                self.z[i] = quantize_kmeans((m.weight + self.u[i]) * support, self.bits)[0]
                self.u[i] += m.weight - self.z[i]

    def state(self) -> dict:
        return {
            "model": cpu_state(self.job.model),
            "z": [t.cpu() for t in self.z],
            "u": [t.cpu() for t in self.u],
        }

    def finish(self) -> None:
        model = self.job.model
        project_global(self.layers, self.job.s.sparsity)
        masks = {name: (m.weight != 0).float() for name, m in prunable_layers(model)}
        if self.bits:  # the model that comes out is the quantised one
            with torch.no_grad():
                for m in self.layers:
                    m.weight.copy_(quantize_kmeans(m.weight, self.bits)[0])
        apply_masks(model, masks)


class CleanMix(LayeredHooks):
    """ATMC's fine-tuning loss: `clean_weight` clean cross-entropy mixed into the adversarial one,
    as in its search (the reference trains every stage on 0.5 CE(x) + 0.5 CE(x_adv))."""

    def __init__(self, job: PruneJob):
        super().__init__(job.hooks)
        self.clean_weight = clean_share(job.finetune, job.options["clean_weight"])

    def sample_losses(self, losses, model, x, y, idx):
        losses = with_clean(losses, model, x, y, self.clean_weight)
        return super().sample_losses(losses, model, x, y, idx)


class Codebook(CleanMix):
    """ATMC's fine-tuning with quantisation: each layer kept on the levels it left ADMM with,
    after every step."""

    def __init__(self, job: PruneJob):
        super().__init__(job)
        self.layers = [m for _, m in prunable_layers(job.model)]
        self.books = [torch.unique(m.weight_orig.detach() * m.weight_mask) for m in self.layers]

    @torch.no_grad()
    def after_step(self, batch: int) -> None:
        for m, book in zip(self.layers, self.books):
            m.weight_orig.copy_(snap(m.weight_orig * m.weight_mask, book[book != 0]))
        super().after_step(batch)


# -- the methods -----------------------------------------------------------------------------


@register
class RobustAdmm(PruningMethod):
    """The ADMM phase (Admm above), then hard masks: Z and U are updated every
    `admm_epoch` epochs and rho grows by `rho_factor` at each update."""

    name, pipeline, scope = "r-admm", "A", "local"
    recipe = r_admm.RECIPE
    implemented = (
        "Ye et al. 2019 and its code's defaults: W/Z/U updates under the adversarial loss with Z/U every "
        "`admm_epoch` (20) epochs, ρ from 0.001 ×`rho_factor` (1.3) at each update, the W-step lr reset "
        "at each update and cut tenfold every third of `admm_epoch`, conv layers only (`layers: all` for "
        "linear too); hard prune, masked retraining; irregular or filter sparsity, per-layer "
        "`layer_sparsity`"
    )
    omitted = ""
    trains = {"search": {"select": "last", "schedule": "admm-cycle"}}  # admm.py: its lr cycle
    criterion = "ADMM-optimised magnitude"
    description = (
        "R-ADMM (Ye et al. 2019): adversarial ADMM phase pulling W towards the sparse "
        "set, hard prune, masked adversarial retraining; irregular or filter sparsity"
    )
    search_phase = True
    # yeshaokai/Robustness-Aware-Pruning-ADMM ADMM_examples/cifar10/config.yaml.example: rho
    # 0.001, multi_rho (x1.3 at each update, admm/admm.py), admm_epoch 20, conv layers' prune ratios
    options = {
        "rho": Number(0.001, 0.0, 1e3),
        "rho_factor": Number(1.3, 1.0, 100.0),
        "admm_epoch": Whole(20, 1),
        "layers": Choice("conv", ("conv", "all")),
        "sparsity_type": Choice("irregular", ("irregular", "filter")),
        "layer_sparsity": LayerSparsity(),
    }

    def admm(self, job: PruneJob) -> Admm:
        o = job.options
        return Admm(
            job.model,
            job.s.sparsity,
            o["layer_sparsity"],
            o["rho"],
            make_projection(o["sparsity_type"]),
            o["sparsity_type"],
            layers=o["layers"],
            rho_factor=o["rho_factor"],
        )

    def start_search(self, job: PruneJob, saved: dict | None) -> Search:
        return AdmmSearch(job, saved, self.admm(job))


@register
class Pwoa(RobustAdmm):
    """PwoA as the authors run it (scripts/cifar10.sh, core/train_hsic_prune.py, math/admm.py):
    R-ADMM's phases (layer-wise irregular sparsity, Z/U every `admm_epoch` epochs from rho 0.01
    growing x1.35 up to 1, Z = Proj(W) again at the start of every epoch, the ADMM learning-rate
    cycle) where every loss is self-distillation from the adversarially trained dense model at
    temperature 30 (weight 10, KLDivLoss(log_target) x T^2) on clean inputs: no cross-entropy, no
    adversarial examples (xentropy_weight 0, mix_ratio 0). The masked retraining adds the HSIC
    bottleneck, 2e-5 HSIC(Z, X) - 1e-4 HSIC(Z, Y), on the stem's, every residual block's and the
    pooled features' outputs (hsic_taps); the ADMM phase's HSIC weights are 0, as the authors'
    scripts leave them."""

    name, pipeline, scope = "pwoa", "A", "local"
    recipe = pwoa.RECIPE
    implemented = (
        "Jian et al. 2022 and neu-spiral/PwoA: R-ADMM's phases (ρ 0.01 ×1.35 capped at 1, Z/U every 3 "
        "epochs, Z = Proj(W) again every epoch) where every loss is self-distillation from the dense model "
        "(T = 30, weight 10, ×T²) on clean inputs, the retraining's plus the HSIC bottleneck "
        "(2e-5 HSIC(Z, X) − 1e-4 HSIC(Z, Y), σ 5; `search_hsic_x`/`search_hsic_y` 0 in the ADMM phase) "
        "on the stem's, each residual block's and the pooled features' outputs; no cross-entropy, no "
        "adversarial examples"
    )
    omitted = (
        "networks without residual blocks (VGG, the small CNNs, DenseNet, MobileNet) take every conv and "
        "linear layer's output as HSIC's Z"
    )
    trains = {
        "search": {"select": "last", "schedule": "admm-cycle", "trainer": "distill"},  # its objective
        "finetune": {"trainer": "distill+hsic"},
    }
    criterion = "ADMM-optimised magnitude, distilled without adversarial examples"
    description = (
        "PwoA (Jian et al. 2022): prune an adversarially trained network by ADMM and retrain it "
        "under its masks with self-distillation from the dense model and the HSIC bottleneck, "
        "on clean data only"
    )
    options = {
        **RobustAdmm.options,
        "rho": Number(0.01, 0.0, 1e3),  # cifar10.sh: --rho 0.01
        "rho_factor": Number(1.35, 1.0, 100.0),  # admm_multi_rho_scheduler: x1.35
        "rho_max": Number(1.0, 0.0, 1e6),  # math/admm.py admm_multi_rho_scheduler: min(1, 1.35 rho)
        "admm_epoch": Whole(3, 1),  # --admm-epochs 3
        "temperature": Number(30.0, 0.01, 1e3),  # --distill_temp 30
        "distill_weight": Number(10.0, 0.0, 1e3),  # --distill_alpha 10
        # general-prune-hsicbt-cifar10.yaml lambda_x 0, lambda_y 0 (cifar10.sh passes no -lx/-ly)
        "search_hsic_x": Number(0.0, 0.0, 1e3),
        "search_hsic_y": Number(0.0, 0.0, 1e3),
        "hsic_x": Number(2e-5, 0.0, 1e3),  # cifar10.sh: -relx 0.00002 (retraining)
        "hsic_y": Number(1e-4, 0.0, 1e3),  # cifar10.sh: -rely 0.0001 (retraining)
        "sigma": Number(5.0, 1e-6, 1e6),  # general-prune-hsicbt-cifar10.yaml: sigma 5, k_type_y linear
    }

    def admm(self, job: PruneJob) -> Admm:
        admm = super().admm(job)
        admm.rho_max = job.options["rho_max"]
        return admm

    def start_search(self, job: PruneJob, saved: dict | None) -> Search:
        return PwoaSearch(job, saved, self.admm(job))

    def training_hooks(self, job: PruneJob) -> TrainingHooks:
        return Distillation(job)


@register
class Atmc(PruningMethod):
    """ATMC as VITA-Group/ATMC trains it (cifar/train_proj_admm_quant.py, cifar/util_trts.py
    model_train_proj_prune_admm_quant): the loss is half clean, half adversarial cross-entropy, in
    the search and the fine-tuning (the parent's training is the grid's dense recipe); after every
    optimiser step the weights are projected onto the global sparse set (l0proj, one
    ranking across layers); every `admm_interval` batches the quantisation's ADMM variables move,
    Z = k-means-quantise(W + U) on W's support with zero a fixed level, U += W - Z, and the loss
    carries rho/2 ||W - Z + U||^2 (rho 0.1). The model that comes out is Z, its codebook then
    enforced after every fine-tuning step (not only at the end). The low-rank part (W = AB + C)
    is not implemented."""

    name, pipeline, scope = "atmc", "D", "global"
    recipe = atmc.RECIPE
    implemented = (
        "Gui et al. 2019 and VITA-Group/ATMC: half clean, half adversarial loss (`clean_weight` 0.5) in the "
        "search and fine-tuning; one global sparse projection (l0proj) after every step; k-bit quantisation "
        "by ADMM every `admm_interval` (10) "
        "batches with k-means levels and zero a fixed level (2^bits − 1 non-zero levels + 0), ρ 0.1; the "
        "quantised model kept, its codebook enforced after every fine-tuning step; model size in bits"
    )
    omitted = (
        "the low-rank part (W = AB + C); the dense parent's half-clean loss (the parent is the grid's dense "
        "recipe, not the method's); the reference's k-means starts at random, apgrid's at quantiles "
        "(deterministic); the reference has 2^bits non-zero levels + 0, apgrid one fewer so that a weight"
        " fits in `bits` bits"
    )
    # the clean half: the recipe's trainer pgd+clean/2 mixes it; under any other trainer the
    # hooks mix clean_weight in (clean_share), never both
    trains = {"search": {"select": "last"}}
    criterion = "ADMM-optimised magnitude + quantisation"
    description = (
        "ATMC (Gui et al. 2019): adversarial training (half clean, half adversarial loss) with a "
        "global sparse projection after every step and k-bit k-means quantisation by ADMM; the "
        "codebook enforced through fine-tuning; model size recorded in bits"
    )
    search_phase = True
    options = {
        "bits": Whole(8, 2, 16, also=(0,)),  # 0: sparse only
        "rho": Number(0.1, 0.0, 1e3),  # train_proj_admm_quant.py: rho=0.1
        "admm_interval": Whole(10, 1),  # README.md run 4 (8-bit ATMC): --quant_interval 10 (batches)
        "clean_weight": Number(0.5, 0.0, 1.0),  # util_trts.py: 0.5 clean + 0.5 adversarial
    }

    def start_search(self, job: PruneJob, saved: dict | None) -> Search:
        return AtmcSearch(job, saved)

    def finetune_hooks(self, job: PruneJob) -> TrainingHooks:
        return Codebook(job) if job.options["bits"] else CleanMix(job)

    def finish(self, job: PruneJob) -> int:
        return job.options["bits"] or 32
