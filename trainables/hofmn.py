"""HO-FMN (Mura et al. 2024, pralab/HO-FMN): FMN's hyperparameters tuned by Bayesian optimisation.

The authors tune one attack (a loss, an optimiser and a step-size scheduler) at a time with Ax
(src/ho_fmn/ho_fmn.py HOFMN.tune): `trials` trials, each one FMN run of `steps` steps on the same
batch of the first samples, the objective being the median distance of the batch (samples left
without an adversarial point, or misclassified already, count as infinitely far), and the best
trial's parameters kept. Their tuned FMN then attacks the test samples. apgrid searches each
attack of the grid's list the same way and keeps the one whose best trial has the smallest median.

The search is a Gaussian-process Bayesian optimisation written here, as Ax runs it by default for
this search space (four continuous parameters, no noise): scrambled Sobol points first, then
Expected Improvement under a GP with a Matern-5/2 kernel. It is deterministic given its seed (Ax's
BoTorch steps are not, by its own documentation), so every evaluation actor picks the same attack.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from apgrid.trainables.attacks import (
    HOFMN_LOSSES,
    HOFMN_OPTIMIZERS,
    HOFMN_SCHEDULERS,
    FMNConfig,
    fmn,
)

# pralab/HO-FMN src/ho_fmn/search_space.py OPTIMIZER_PARAMS: (low, high, log scale) per parameter
LR = (8 / 255, 10.0, True)
SEARCH_SPACE = {
    "sgd": {
        "lr": LR,
        "momentum": (0.0, 0.9, False),
        "weight_decay": (0.01, 1.0, False),
        "dampening": (0.0, 0.2, False),
    },
    "adam": {
        "lr": LR,
        "weight_decay": (0.01, 1.0, False),
        "beta1": (0.0, 0.999, False),
        "beta2": (0.0, 0.999, False),
    },
}
SEARCH_SPACE["adamax"] = SEARCH_SPACE["adam"]
# SCHEDULER_PARAMS["CALR"]: every parameter fixed (T_max = the attack's steps, eta_min = 0)

# Every attack HO-FMN's code can run but RLROP (attacks.HOFMN_SCHEDULERS), by name
HOFMN_ATTACKS = tuple(
    f"{lo}-{op}-{sc}" for lo in HOFMN_LOSSES for op in HOFMN_OPTIMIZERS for sc in HOFMN_SCHEDULERS
)


def decode(attack: str, point: torch.Tensor) -> FMNConfig:
    """The configuration at `point` of the unit cube of `attack`'s search space."""
    loss, optimizer, scheduler = attack.split("-")
    values = {}
    for u, (name, (low, high, log)) in zip(point.tolist(), SEARCH_SPACE[optimizer].items()):
        values[name] = math.exp(math.log(low) + u * math.log(high / low)) if log else low + u * (high - low)
    if "beta1" in values:
        values["betas"] = (values.pop("beta1"), values.pop("beta2"))
    return FMNConfig(loss=loss, optimizer=optimizer, scheduler=scheduler, **values)


def median_distance(distance: torch.Tensor, found: torch.Tensor) -> float:
    """HOFMN._evaluate's objective: the median over the batch (torch's, the lower of the middle
    two), a sample without an adversarial point or with none needed (distance 0) at infinity."""
    far = ~found | ~(distance > 0)
    return float(torch.where(far, torch.inf, distance).median())


@dataclass(frozen=True)
class Trial:
    config: FMNConfig
    median: float


@dataclass(frozen=True)
class Search:
    """One attack's search: its trials in order and the best one (ties: the earliest)."""

    attack: str
    trials: tuple[Trial, ...]

    @property
    def best(self) -> Trial:
        return min(self.trials, key=lambda t: t.median)  # min keeps the first of equals


def tune_hofmn(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: str,
    steps: int,
    trials: int,
    attacks: tuple[str, ...] = HOFMN_ATTACKS,
    seed: int = 0,
) -> tuple[FMNConfig, list[Search]]:
    """HO-FMN's pick for `model` on the tuning samples (x, y): `trials` trials of a Bayesian
    optimisation per attack, each an FMN of `steps` steps on every sample; the attack whose best
    trial has the smallest median distance wins (the first listed on ties). Returns the pick and
    every search."""

    def objective(config: FMNConfig) -> float:
        distance, found, _ = fmn(model, x, y, norm=norm, steps=steps, step_size=config.lr, config=config)
        return median_distance(distance, found)

    searches = []
    for k, attack in enumerate(attacks):
        dims = len(SEARCH_SPACE[attack.split("-")[1]])
        points, values = bayes_opt(
            lambda p, a=attack: objective(decode(a, p)), dims, trials, seed * 1_000_003 + k
        )
        searches.append(Search(attack, tuple(Trial(decode(attack, p), v) for p, v in zip(points, values))))
    best = min(searches, key=lambda s: s.best.median)
    return best.best.config, searches


# -- Bayesian optimisation -------------------------------------------------------------------


def initial_trials(dims: int) -> int:
    """Ax's Sobol trials before its GP takes over when the number of trials is not given (as
    HOFMN.tune creates its experiment): twice the tunable parameters, at least 5
    (ax/modelbridge/dispatch_utils.py calculate_num_initialization_trials)."""
    return max(5, 2 * dims)


def bayes_opt(objective, dims: int, trials: int, seed: int) -> tuple[list[torch.Tensor], list[float]]:
    """Minimise `objective` over the unit cube in `trials` evaluations: Sobol points (scrambled,
    seeded), then each next point the maximum of Expected Improvement under a GP fitted to every
    value so far. Returns the points and values in the order they were tried."""
    sobol = torch.quasirandom.SobolEngine(dims, scramble=True, seed=seed)
    points = list(sobol.draw(min(trials, initial_trials(dims)), dtype=torch.float64))
    values = [objective(p) for p in points]
    gen = torch.Generator().manual_seed(seed)
    while len(points) < trials:
        point = next_point(torch.stack(points), torch.tensor(values, dtype=torch.float64), sobol, gen)
        points.append(point)
        values.append(objective(point))
    return points, values


def next_point(x: torch.Tensor, values: torch.Tensor, sobol, gen) -> torch.Tensor:
    """The candidate of most Expected Improvement: 2,048 fresh Sobol points and 512 Gaussian
    steps around the best point so far (Ax maximises by L-BFGS from many starts)."""
    finite = torch.isfinite(values)
    # an infinite median (half the samples unbroken) is as bad as the worst seen; all: flat
    y = torch.where(finite, values, values[finite].max() if finite.any() else torch.zeros(()))
    std = y.std() if len(y) > 1 and y.std() > 0 else torch.ones(())
    z = (y - y.mean()) / std  # Ax's StandardizeY
    gp = fit_gp(x, z)
    best = x[z.argmin()]
    local = (best + 0.05 * torch.randn(512, x.shape[1], generator=gen, dtype=torch.float64)).clamp(0, 1)
    candidates = torch.cat([sobol.draw(2048, dtype=torch.float64), local])
    mean, var = gp(candidates)
    return candidates[expected_improvement(mean, var, z.min()).argmax()]


def expected_improvement(mean: torch.Tensor, var: torch.Tensor, best: torch.Tensor) -> torch.Tensor:
    """EI of a minimisation: E[max(best - f, 0)] for f ~ N(mean, var)."""
    sigma = var.clamp_min(1e-12).sqrt()
    u = (best - mean) / sigma
    normal = torch.distributions.Normal(0.0, 1.0)
    return sigma * (u * normal.cdf(u) + normal.log_prob(u).exp())


def matern52(a: torch.Tensor, b: torch.Tensor, lengthscale: torch.Tensor) -> torch.Tensor:
    d = torch.cdist(a / lengthscale, b / lengthscale).clamp_min(0) * math.sqrt(5)
    return (1 + d + d**2 / 3) * torch.exp(-d)


def fit_gp(x: torch.Tensor, y: torch.Tensor, iterations: int = 200):
    """A GP posterior on (x, y): Matern-5/2 kernel with one lengthscale per dimension and an
    output scale, under BoTorch's priors Gamma(3, 6) and Gamma(2, 0.15)
    (botorch/models/utils/gpytorch_modules.py get_matern_kernel_with_gamma_prior), the noise fixed
    tiny (HOFMN._evaluate reports a standard error of 0); MAP by Adam from fixed starting values,
    so the same data always give the same posterior. Returns mean_and_variance(points)."""
    log_ls = torch.full((x.shape[1],), math.log(0.5), dtype=torch.float64, requires_grad=True)
    log_scale = torch.zeros((), dtype=torch.float64, requires_grad=True)
    noise = 1e-6
    eye = torch.eye(len(x), dtype=torch.float64)
    lengthscale_prior = torch.distributions.Gamma(3.0, 6.0)
    scale_prior = torch.distributions.Gamma(2.0, 0.15)
    opt = torch.optim.Adam([log_ls, log_scale], lr=0.05)
    for _ in range(iterations):
        opt.zero_grad()
        k = log_scale.exp() * matern52(x, x, log_ls.exp()) + noise * eye
        chol = torch.linalg.cholesky(k + 1e-8 * eye)
        alpha = torch.cholesky_solve(y[:, None], chol)
        nll = 0.5 * (y[:, None] * alpha).sum() + chol.diagonal().log().sum()
        nll = nll - lengthscale_prior.log_prob(log_ls.exp()).sum() - scale_prior.log_prob(log_scale.exp())
        nll.backward()
        opt.step()
    with torch.no_grad():
        ls, scale = log_ls.exp(), log_scale.exp()
        chol = torch.linalg.cholesky(scale * matern52(x, x, ls) + (noise + 1e-8) * eye)
        alpha = torch.cholesky_solve(y[:, None], chol)

    def posterior(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cross = scale * matern52(points, x, ls)
        mean = (cross @ alpha).squeeze(1)
        v = torch.cholesky_solve(cross.T, chol)
        return mean, (scale - (cross * v.T).sum(1)).clamp_min(0)

    return posterior
