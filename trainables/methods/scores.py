"""Optimised importance scores: HYDRA (Sehwag et al., NeurIPS 2020), RST (Fu et al. 2021) and HARP
(Zhao & Wressnegger, ICLR 2023; intellisec/harp)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn.utils import parametrize, prune

from apgrid.trainables.fields import Flag, Number
from apgrid.trainables.masks import check_sparsity, kept_count, prunable_layers
from apgrid.trainables.methods.base import PruningMethod, Search, register
from apgrid.trainables.methods.recipes import harp, hydra, rst

if TYPE_CHECKING:
    from apgrid.trainables.pipeline import PruneJob


class _TopKStraightThrough(torch.autograd.Function):
    """Binary mask of the k largest scores; the gradient passes straight through (Sec. 3.3)."""

    @staticmethod
    def forward(ctx, scores, k):
        mask = torch.zeros_like(scores)
        mask.view(-1)[scores.flatten().topk(k).indices] = 1.0
        return mask

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def scaled_scores(weight: torch.Tensor) -> torch.Tensor:
    """HYDRA's scaled initialisation (Sec. 3.4; utils/model.py initialize_scaled_score):
    sqrt(6 / fan_in) * w / max|w|."""
    fan_in = weight[0].numel()
    return math.sqrt(6.0 / fan_in) * weight.detach() / weight.detach().abs().max()


class HydraScores(nn.Module):
    """Parametrization weight -> weight * topk(|scores|); only `scores` is trained. The scores
    start at `init` (RST's random draw), by default HYDRA's scaled weights."""

    def __init__(self, weight: torch.Tensor, sparsity: float, init: torch.Tensor | None = None):
        super().__init__()
        self.scores = nn.Parameter((scaled_scores(weight) if init is None else init).clone())
        self.k = kept_count(weight.numel(), sparsity)

    def forward(self, weight):
        return weight * _TopKStraightThrough.apply(self.scores.abs(), self.k)

    def mask(self) -> torch.Tensor:
        return _TopKStraightThrough.apply(self.scores.detach().abs(), self.k)


def attach_scores(model: nn.Module, make, freeze_bn: bool = False) -> list[nn.Parameter]:
    """Freeze the conv and linear weights and biases and parametrize each layer's weight with
    `make(weight)`; returns the parameters to optimise: the parametrizations', and the batch-norm
    affine parameters unless `freeze_bn` (HYDRA's utils/model.py freeze_vars leaves batch norm
    trainable without its --freeze-bn; HARP's the same)."""
    batch_norm = [
        p for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) for p in m.parameters()
    ]
    for p in model.parameters():
        p.requires_grad_(False)
    learned = []
    for _, m in prunable_layers(model):
        parametrize.register_parametrization(m, "weight", make(m.weight))
        learned += list(m.parametrizations.weight[0].parameters())
    if freeze_bn:
        return learned
    for p in batch_norm:
        p.requires_grad_(True)
    return learned + batch_norm


def hydra_attach_scores(model: nn.Module, sparsity: float, freeze_bn: bool = False) -> list[nn.Parameter]:
    check_sparsity(sparsity)
    return attach_scores(model, lambda weight: HydraScores(weight, sparsity), freeze_bn)


# -- RST (Fu et al. 2021; GATECH-EIC/Robust-Scratch-Ticket) -------------------------------------


def signed_constant(model: nn.Module) -> None:
    """Every conv and linear weight to sign(w) * gain / sqrt(fan_in), gain that of ReLU (sqrt 2):
    utils/builder.py _init_conv 'signed_constant' (config_rst/*.yaml init signed_constant, mode
    fan_in, nonlinearity relu; the classifier is a 1x1 conv there, a linear layer here)."""
    gain = nn.init.calculate_gain("relu")
    with torch.no_grad():
        for _, m in prunable_layers(model):
            fan_in = nn.init._calculate_correct_fan(m.weight, "fan_in")
            m.weight.copy_(m.weight.sign() * (gain / math.sqrt(fan_in)))


def non_affine_batch_norm(model: nn.Module) -> None:
    """Batch norm without its affine map (utils/bn_type.py NonAffineBatchNorm: affine=False): weight
    1 and bias 0, never trained; the running statistics still update in train mode
    (track_running_stats stays True there)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
                m.weight.fill_(1.0)
                m.bias.zero_()


def random_scores(weight: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """RST's score initialisation, independent of the weights: utils/conv_type.py SubnetConv.__init__
    nn.init.kaiming_uniform_(scores, a=sqrt(5)), U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    scores = torch.empty(weight.shape)
    nn.init.kaiming_uniform_(scores, a=math.sqrt(5), generator=generator)
    return scores.to(weight.device)


def rst_attach_scores(model: nn.Module, sparsity: float, seed: int) -> list[nn.Parameter]:
    """The random network as RST searches it: signed-constant weights, non-affine batch norm, every
    weight and bias frozen, the scores drawn at random (from `seed`); returns the scores."""
    check_sparsity(sparsity)
    signed_constant(model)
    non_affine_batch_norm(model)
    generator = torch.Generator().manual_seed(seed)
    return attach_scores(
        model, lambda weight: HydraScores(weight, sparsity, random_scores(weight, generator)), freeze_bn=True
    )


def hydra_finalize(model: nn.Module) -> None:
    """Turn learned scores into fixed masks and unfreeze the weights for fine-tuning."""
    for _, m in prunable_layers(model):
        mask = m.parametrizations.weight[0].mask()
        parametrize.remove_parametrizations(m, "weight", leave_parametrized=False)
        prune.custom_from_mask(m, "weight", mask)
    for p in model.parameters():
        p.requires_grad_(True)


# -- HARP (Zhao & Wressnegger, ICLR 2023; intellisec/harp) -------------------------------------


class _RateTopK(torch.autograd.Function):
    """The top `density` share of the scores (models/layers.py GetSubnet: int((1 - k) n) pruned);
    the scores get the gradient straight through and the layer's rate its sum."""

    @staticmethod
    def forward(ctx, scores, density):
        mask = torch.zeros_like(scores)
        kept = scores.numel() - int((1 - float(density)) * scores.numel())
        mask.view(-1)[scores.flatten().topk(kept).indices] = 1.0
        return mask

    @staticmethod
    def backward(ctx, grad):
        return grad, grad.sum()


class HarpScores(HydraScores):
    """HYDRA's scores plus a learned layer density k = sigmoid(r) (1 - k_min) + k_min, k_min =
    alpha * target (utils/utils.py rate_act_func), starting at density `start` in every layer
    whatever the target (utils/model.py initialize_stg_rate with configs/strategies.json 010_uni:
    0.1 per layer; utils/utils.py rate_init_func)."""

    def __init__(self, weight: torch.Tensor, sparsity: float, alpha: float, start: float):
        super().__init__(weight, sparsity)
        self.k_min = alpha * (1 - sparsity)
        inverse = min(max((start - self.k_min) / (1 - self.k_min), 0.01), 0.99)  # rate_init_func's clip
        self.rate = nn.Parameter(torch.tensor(math.log(inverse / (1 - inverse))))

    def density(self) -> torch.Tensor:
        return torch.sigmoid(self.rate) * (1 - self.k_min) + self.k_min

    def forward(self, weight):
        return weight * _RateTopK.apply(self.scores.abs(), self.density())


def harp_attach_scores(
    model: nn.Module, sparsity: float, alpha: float, start: float = 0.1, freeze_bn: bool = False
) -> list[nn.Parameter]:
    check_sparsity(sparsity)
    return attach_scores(model, lambda weight: HarpScores(weight, sparsity, alpha, start), freeze_bn)


def _harp_layers(model: nn.Module) -> list[tuple[nn.Module, HarpScores]]:
    return [(m, m.parametrizations.weight[0]) for _, m in prunable_layers(model)]


def harp_density(model: nn.Module) -> torch.Tensor:
    """The share of weights the learned layer rates keep, differentiable in the rates."""
    layers = _harp_layers(model)
    total = sum(m.weight.numel() for m, _ in layers)
    return sum(m.weight.numel() * p.density() for m, p in layers) / total


def harp_rate_loss(model: nn.Module, sparsity: float) -> torch.Tensor:
    """HARP's compression loss (utils/hw.py hw_loss): max(density / target - 1, 0)."""
    return torch.clamp(harp_density(model) / (1 - sparsity) - 1.0, min=0.0)


def harp_finalize(model: nn.Module, sparsity: float) -> list[float]:
    """Fixed masks from the learned rates and scores, weights unfrozen; returns each layer's
    sparsity. Where the rates still keep more than the target (the loss is a penalty), every layer
    is scaled down alike so that the model meets the grid's sparsity (apgrid's guarantee)."""
    layers = _harp_layers(model)
    sizes = [m.weight.numel() for m, _ in layers]
    kept = [n - int((1 - float(p.density().detach())) * n) for n, (_, p) in zip(sizes, layers)]
    budget = kept_count(sum(sizes), sparsity)
    if sum(kept) > budget:
        kept = [int(k * budget / sum(kept)) for k in kept]
    for k, (_, p) in zip(kept, layers):
        p.k = max(k, 1)
    hydra_finalize(model)
    return [1 - p.k / n for n, (_, p) in zip(sizes, layers)]


class ScoreSearch(Search):
    """HYDRA's score phase: the scores (and batch norm, unless frozen) learned, the weights frozen;
    batch norm's running statistics travel in the state with the scores."""

    def __init__(self, job: PruneJob, saved: dict | None, params: list[nn.Parameter]):
        if saved:
            for p, value in zip(params, saved["scores"]):
                p.data.copy_(value)
            buffers = saved.get("buffers", {})
            for name, buffer in job.model.named_buffers():
                if name in buffers:
                    buffer.copy_(buffers[name])
        super().__init__(job, params)
        self.params = params

    def state(self) -> dict:
        return {
            "scores": [p.detach().cpu() for p in self.params],
            "buffers": {name: b.detach().cpu().clone() for name, b in self.job.model.named_buffers()},
        }

    def finish(self) -> None:
        hydra_finalize(self.job.model)


class HarpSearch(ScoreSearch):
    """HYDRA's scores and the layer rates, under the compression loss gamma_t * max(density /
    target - 1, 0); gamma_t grows with the epoch until the target is first met, then stays. With
    `select: best` (a validation split) the search keeps its best epoch by validation PGD accuracy
    among those after the target was met (train.py: is_best only once reach_hw; the authors score
    the test set, apgrid never does), else its last."""

    def __init__(self, job: PruneJob, saved: dict | None, params: list[nn.Parameter]):
        super().__init__(job, saved, params)
        self.frozen = saved["gamma"] if saved else None
        self.gamma = self.frozen
        from apgrid.trainables.pipeline import Selection  # the pipeline imports the registry

        self.selects = self.recipe.select == "best" and job.ds.x_val is not None
        self.selection = Selection(saved.get("selection") if saved else None)

    def begin_epoch(self, epoch: int) -> None:
        self.gamma = self.frozen if self.frozen is not None else (epoch + 1) * self.job.options["gamma"]

    def penalty(self):
        return self.gamma * harp_rate_loss(self.job.model, self.job.s.sparsity)

    def end_epoch(self, epoch: int, metrics: dict) -> None:
        model = self.job.model
        if round(float(harp_rate_loss(model, self.job.s.sparsity).detach()), 4) == 0.0:
            self.frozen = self.gamma  # train.py: the target reached, gamma stays where it is
        metrics.update(harp_density=float(harp_density(model).detach()), harp_gamma=self.gamma)
        if self.selects and self.frozen is not None:  # a candidate once the target was reached
            job = self.job
            metrics.update(
                self.selection.score(epoch + 1, model, job.ds, job.s.eps, job.s.norm, job.device, keep=True)
            )
            metrics["harp_selected_epoch"] = self.selection.best_epoch

    def state(self) -> dict:
        return {**super().state(), "gamma": self.frozen, "selection": self.selection.state()}

    def finish(self) -> None:
        self.selection.restore_best(self.job.model)  # nothing kept: the last epoch
        self.job.layer_sparsities = harp_finalize(self.job.model, self.job.s.sparsity)


# -- the methods -----------------------------------------------------------------------------


@register
class Hydra(PruningMethod):
    name, pipeline, scope = "hydra", "A", "local"
    recipe = hydra.RECIPE
    implemented = (
        "Sehwag et al. 2020: scaled score init (Sec. 3.4), top-k straight-through (Sec. 3.3), weights "
        "frozen and batch norm trained in the score phase (`freeze_bn` option), fine-tuning; TRADES "
        "parent in `thin-ice.yaml`; best epoch on a held-out split (`select: best`)"
    )
    omitted = "the reference selects on the test set: apgrid never does"
    criterion = "optimised importance score"
    description = (
        "HYDRA (Sehwag et al. 2020): learn scores under the adversarial loss with weights "
        "frozen (batch norm trains, as the reference's default), keep the top-k per "
        "layer, then fine-tune the weights"
    )
    search_phase = True
    options = {"freeze_bn": Flag(False)}  # the reference's --freeze-bn flag

    def start_search(self, job: PruneJob, saved: dict | None) -> Search:
        freeze_bn = job.options["freeze_bn"]
        return ScoreSearch(job, saved, hydra_attach_scores(job.model, job.s.sparsity, freeze_bn=freeze_bn))


@register
class RobustScratchTicket(Hydra):
    name, pipeline, scope = "rst", "B", "local"
    recipe = rst.RECIPE
    implemented = (
        "Fu et al. 2021 (robust scratch tickets): scores learned under the adversarial loss on the randomly "
        "initialised network (the dense trial's seeded initialisation) made signed constants (± sqrt(2 / "
        "fan_in) per layer), scores drawn kaiming-uniform, batch norm non-affine (1 / 0, its running "
        "statistics updating), every weight and bias frozen, no fine-tuning"
    )
    omitted = (
        "the reference keeps its best epoch on the test set: apgrid the last; biases, which the "
        "reference's networks lack, stay at their initial values"
    )
    criterion = "optimised importance score on random weights"
    description = (
        "RST (Fu et al. 2021, robust scratch tickets): scores learned under the adversarial loss "
        "on the randomly initialised network, which is never trained; the top-k per layer is the "
        "ticket, its weights bit-identical to their initialisation (no fine-tuning)"
    )
    finetunes = False
    needs_initial_state = True
    options = {}  # batch norm is non-affine: nothing of it to freeze or train

    def start_search(self, job: PruneJob, saved: dict | None) -> Search:
        job.model.load_state_dict(job.initial_state)  # the random network, never the trained one
        return ScoreSearch(job, saved, rst_attach_scores(job.model, job.s.sparsity, job.s.seed))


@register
class Harp(PruningMethod):
    """HARP as intellisec/harp trains it (train.py, trainer/adv.py, utils/hw.py): HYDRA's scores
    and one learned density per layer, trained together under the adversarial loss plus
    gamma_t * max(density / target - 1, 0), gamma_t = (epoch + 1) * gamma until the target is
    first met, then frozen; the weights stay frozen (batch norm trains), then fine-tuning."""

    name, pipeline, scope = "harp", "A", "global"
    recipe = harp.RECIPE
    implemented = (
        "Zhao & Wressnegger 2023 and intellisec/harp: HYDRA's scores plus one density per layer, k = "
        "sigmoid(r)(1 − k_min) + k_min with k_min = `alpha` (0.1) × target, every layer started at "
        "density `start` (0.1, strategy 010_uni); the rate gets the sum of its mask's gradient; loss + γ_t "
        "max(density/target − 1, 0), γ_t = (epoch + 1) `gamma` (0.01) until the target is first met, then "
        "frozen; weights frozen, batch norm trained; the best search epoch after the target is met "
        "(`select: best`, on the validation split); fine-tuning"
    )
    omitted = (
        "if the learned rates still keep more than the target, every layer is scaled down alike so that "
        "the model meets the grid's sparsity; channel pruning"
    )
    criterion = "optimised importance score + learned layer rates"
    description = (
        "HARP (Zhao & Wressnegger 2023): learn importance scores and each layer's pruning rate "
        "under the adversarial loss with a compression loss towards the global target, keep the "
        "top scores of each layer at its learned rate, then fine-tune the weights"
    )
    search_phase = True
    # README: --gamma 0.01 for weight pruning; args.py: --alpha 0.1 (rate_min = alpha * k)
    # README --stg_id '010_uni': configs/strategies.json, every layer's initial density 0.1
    options = {
        "gamma": Number(0.01, 0.0, 1e3),
        "alpha": Number(0.1, 0.0, 1.0),
        "start": Number(0.1, 0.0, 1.0),
        "freeze_bn": Flag(False),
    }
    trains = {"search": {}}  # HarpSearch keeps the epoch its recipe selects (after the target is met)

    def start_search(self, job: PruneJob, saved: dict | None) -> Search:
        o = job.options
        params = harp_attach_scores(
            job.model, job.s.sparsity, o["alpha"], o["start"], freeze_bn=o["freeze_bn"]
        )
        return HarpSearch(job, saved, params)
