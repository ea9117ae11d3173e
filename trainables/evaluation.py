"""Per-sample robustness evaluation: clean, PGD-k, AutoAttack, FMN distances.

Samples are processed in fixed blocks aligned to the sample index (block b holds samples
[b*block_size, (b+1)*block_size)). Shards are whole blocks, each block's randomness is seeded by its
first sample index (PGD's random start by each sample's own index), and every block is computed the
same way wherever it runs: one shard or many give identical rows.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
import torch
from torch import nn

from apgrid.trainables.attacks import (
    AUTOATTACK_ENSEMBLES,
    NORMS,
    FMNConfig,
    autoattack,
    fmn,
    logit_margin,
    pgd,
    sample_noise,
)
from apgrid.trainables.hofmn import HOFMN_ATTACKS, tune_hofmn


@dataclass(frozen=True)
class ThreatModel:
    norm: str = field(default="Linf", metadata={"choices": NORMS})
    eps: float = field(default=0.1, metadata={"low": 0.0, "high": 1.0})


@dataclass(frozen=True)
class EvalSettings:
    """How each model is evaluated; each field's metadata bounds what a spec may give it."""

    # None: the whole test split
    num_samples: int | None = field(default=None, metadata={"min": 1})
    # AutoAttack on the first N only (None: all of them)
    autoattack_samples: int | None = field(default=None, metadata={"min": 1})
    pgd_steps: int = field(default=10, metadata={"min": 1})
    # default 2.5 eps / steps (Madry et al.)
    pgd_step_size: float | None = field(default=None, metadata={"low": 0.0, "high": 1.0})
    autoattack_version: str = field(default="standard", metadata={"choices": tuple(AUTOATTACK_ENSEMBLES)})
    # A subset of the version's attacks (None: all). APGD-CE + APGD-T is the usual quick screen;
    # rows and report name the attacks that ran.
    autoattack_attacks: tuple[str, ...] | None = None
    fmn_steps: int = field(default=200, metadata={"min": 1})
    fmn_step_size: float = field(default=1.0, metadata={"low": 0.0, "high": 100.0})
    # HO-FMN (Mura et al. 2024, trainables/hofmn.py): per model, each attack of
    # fmn_tuning_attacks (loss-optimiser-scheduler; None: all) is tuned by this many trials of
    # Bayesian optimisation, each an FMN of fmn_tuning_steps steps on the first
    # fmn_tuning_samples test samples; the attack with the smallest median distance runs beside
    # plain FMN (fmn_eps_ho, and fmn_eps_ensemble their per-sample minimum). 0: plain FMN only.
    # The authors' values (pralab/HO-FMN README): 32 trials, 100 steps, a batch of 64.
    fmn_tuning_trials: int = field(default=0, metadata={"min": 0})
    fmn_tuning_samples: int = field(default=32, metadata={"min": 1})
    fmn_tuning_steps: int = field(default=100, metadata={"min": 1})
    fmn_tuning_attacks: tuple[str, ...] | None = field(default=None, metadata={"choices": HOFMN_ATTACKS})
    seed: int = field(default=0, metadata={"min": 0, "max": 2**32 - 1})
    # Samples per block: AutoAttack's iteration counts are per call (Square alone makes 5,000
    # queries), so larger blocks spread them over more samples. benchmarks/evaluation.py on a
    # CIFAR CNN, one thread: 0.95 s/sample at 25, 0.45 at 100, 0.36 at 250 and 500.
    block_size: int = field(default=250, metadata={"min": 1})
    # Samples per model call: "auto" gives the whole block unless it would not fit the worker's
    # memory (auto_batch_size). Like the block, it seeds AutoAttack (re-seeded per batch).
    batch_size: int | str = "auto"

    @property
    def autoattack_ensemble(self) -> str:
        """The AutoAttack attacks that run, in order, comma-separated (rows and runs record it)."""
        return ",".join(self.autoattack_attacks or AUTOATTACK_ENSEMBLES[self.autoattack_version])


def block_ranges(start: int, end: int, block_size: int) -> list[tuple[int, int]]:
    """Blocks of [start, end) cut at multiples of block_size of the absolute sample index."""
    first = (start // block_size) * block_size
    return [(max(s, start), min(s + block_size, end)) for s in range(first, end, block_size)]


def shard_ranges(num_samples: int, block_size: int, num_shards: int) -> list[tuple[int, int]]:
    """Split [0, num_samples) into at most `num_shards` contiguous runs of whole blocks."""
    blocks = block_ranges(0, num_samples, block_size)
    num_shards = max(1, min(num_shards, len(blocks)))
    cuts = np.linspace(0, len(blocks), num_shards + 1).round().astype(int)
    return [(blocks[a][0], blocks[b - 1][1]) for a, b in zip(cuts[:-1], cuts[1:]) if b > a]


def evaluate_samples(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    start: int,
    threat: ThreatModel,
    settings: EvalSettings,
    signed_fmn: bool,
    device: torch.device | str = "cpu",
    fmn_config: FMNConfig | None = None,
) -> pd.DataFrame:
    """Evaluate samples start .. start+len(y)-1 block by block; one row per sample. With
    `fmn_config` (HO-FMN's pick for this model, tune_model_fmn) its distances go beside FMN's."""
    if settings.batch_size == "auto":
        batch = auto_batch_size(model, tuple(x.shape[1:]), settings.block_size, torch.device(device))
        settings = replace(settings, batch_size=batch)
    frames = []
    for b_start, b_end in block_ranges(start, start + len(y), settings.block_size):
        sl = slice(b_start - start, b_end - start)
        frames.append(
            evaluate_block(model, x[sl], y[sl], b_start, threat, settings, signed_fmn, device, fmn_config)
        )
    return pd.concat(frames, ignore_index=True)


def evaluate_model(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    threat: ThreatModel,
    settings: EvalSettings,
    signed_fmn: bool,
    device: torch.device | str = "cpu",
) -> pd.DataFrame:
    """Samples 0 .. len(y)-1 as the grid's evaluate stage computes them, in this process: the
    batch size fixed once for the model, HO-FMN tuned on the first samples (as the grid's
    evaluate stage does, once per model), then block by block. The rows carry the settings' columns
    (settings_columns)."""
    device = torch.device(device)
    batch = effective_batch_size(settings) if settings.batch_size != "auto" else None
    if batch is None:
        batch = auto_batch_size(model, tuple(x.shape[1:]), settings.block_size, device)
    settings = replace(settings, batch_size=batch)
    config = tune_model_fmn(model, x, y, threat, settings)
    rows = evaluate_samples(model, x, y, 0, threat, settings, signed_fmn, device, config)
    return rows.assign(**settings_columns(threat, settings, batch))


def settings_columns(threat: ThreatModel, settings: EvalSettings, batch_size: int) -> dict:
    """The columns every row of a model records of how it was evaluated."""
    return {
        "norm": threat.norm,
        "eps": threat.eps,
        "pgd_steps": settings.pgd_steps,
        "autoattack_version": settings.autoattack_version,
        "autoattack_attacks": settings.autoattack_ensemble,
        "fmn_steps": settings.fmn_steps,
        "fmn_step_size": settings.fmn_step_size,
        "eval_seed": settings.seed,
        "eval_batch_size": batch_size,
    }


# -- batch size ----------------------------------------------------------------------------------


def attack_bytes_per_sample(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Estimated memory one sample takes in an attack step: every layer's output, kept for the
    backward pass (gradients are freed as it goes), plus the attack's own copies of the input
    (APGD keeps about a dozen: current, best, gradient, momentum). On CPU the growth of the peak
    RSS of a forward-backward at batch 128 was 5.6 MB a sample for ResNet-18 (estimate 5.6)."""
    sizes = []

    def record(_module, _inputs, output):
        if torch.is_tensor(output):
            sizes.append(output.numel() * output.element_size())

    leaves = [m for m in model.modules() if not any(m.children())]
    hooks = [m.register_forward_hook(record) for m in leaves]
    device = next(model.parameters()).device
    try:
        with torch.inference_mode():
            model(torch.zeros(1, *input_shape, device=device))
    finally:
        for hook in hooks:
            hook.remove()
    return sum(sizes) + 16 * 4 * math.prod(input_shape)


def memory_budget(device: torch.device, share: float = 1.0) -> int:
    """Half this worker's share of its device's memory (the other half: weights, kernels'
    workspace, the data). CUDA: the card's total; CPU: what the OS reports available now."""
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
    else:
        total = _available_ram()
    return int(0.5 * min(1.0, share) * total)


def _available_ram() -> int:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")  # macOS, BSD


def fit_batch_size(block_size: int, bytes_per_sample: int, budget_bytes: int) -> int:
    """The whole block when it fits the budget, else the block cut into the fewest equal batches
    that do. AutoAttack's iteration counts are per batch, so every extra batch costs a full run of
    its attacks: fewer, larger batches are faster on any device."""
    fits = budget_bytes // max(1, bytes_per_sample)
    if fits < 1:
        raise MemoryError(
            f"one sample needs ~{bytes_per_sample / 2**20:.0f} MB in an attack step, "
            f"more than this worker's {budget_bytes / 2**20:.0f} MB; give the "
            f"evaluation actors more memory (resources.actor_gpus on a GPU, "
            f"actor_cpus on CPU) or set "
            f"evaluation.batch_size"
        )
    return math.ceil(block_size / math.ceil(block_size / fits))


def auto_batch_size(
    model: nn.Module, input_shape: tuple[int, ...], block_size: int, device: torch.device, share: float = 1.0
) -> int:
    """The batch size for `model` on `device` when this worker has `share` of the device."""
    return fit_batch_size(
        block_size, attack_bytes_per_sample(model, input_shape), memory_budget(device, share)
    )


def effective_batch_size(settings: EvalSettings) -> int:
    """The samples per model call a fixed batch_size gives (a block is never split further)."""
    return min(int(settings.batch_size), settings.block_size)


def evaluate_block(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    first_idx: int,
    threat: ThreatModel,
    settings: EvalSettings,
    signed_fmn: bool,
    device: torch.device | str = "cpu",
    fmn_config: FMNConfig | None = None,
) -> pd.DataFrame:
    model.eval()
    idx = torch.arange(first_idx, first_idx + len(y))
    size = int(settings.batch_size)
    batches = [slice(i, i + size) for i in range(0, len(y), size)]
    step = settings.pgd_step_size or 2.5 * threat.eps / settings.pgd_steps
    noise = sample_noise(idx, x.shape[1:], settings.seed, threat.eps)
    logits, pgd_pred = [], []
    for b in batches:  # PGD's start is per sample, so batching never changes its points
        xd, yd = x[b].to(device), y[b].to(device)
        with torch.inference_mode():
            logits.append(model(xd).float().cpu())
        x_pgd = pgd(
            model,
            xd,
            yd,
            eps=threat.eps,
            steps=settings.pgd_steps,
            step_size=step,
            norm=threat.norm,
            init_noise=noise[b],
        )
        with torch.inference_mode():
            pgd_pred.append(model(x_pgd).argmax(1).cpu())
    logits = torch.cat(logits)
    clean_pred = logits.argmax(1)
    clean_correct = clean_pred == y
    pgd_correct = (torch.cat(pgd_pred) == y) & clean_correct

    aa_robust, broken_by = autoattack_subset(model, x, y, idx, threat, settings, device)

    fmn_eps, fmn_found = fmn_distances(model, x, y, clean_correct, threat, settings, signed_fmn)
    untargeted = fmn_eps.clone()
    if signed_fmn:  # the other reading of a misclassified sample's negative eps
        untargeted = untargeted_distances(model, x, clean_pred, clean_correct, fmn_eps, threat, settings)
    ho_eps = ho_fmn_distances(model, x, y, clean_correct, fmn_eps, threat, settings, fmn_config)
    overstated, bounded = fmn_bounds(
        clean_correct.numpy(),
        pgd_correct.numpy(),
        aa_robust.to_numpy(dtype=bool, na_value=True),
        fmn_eps.numpy(),
        threat.eps,
    )
    return pd.DataFrame(
        {
            "sample_idx": idx.numpy(),
            "label": y.numpy(),
            "clean_pred": clean_pred.numpy(),
            "clean_correct": clean_correct.numpy(),
            "logit_margin": logit_margin(logits, y).numpy(),
            "pgd_correct": pgd_correct.numpy(),
            "aa_correct": aa_robust,
            "aa_broken_by": pd.array(broken_by, dtype="string"),
            "fmn_eps": fmn_eps.numpy(),
            "fmn_found": fmn_found.numpy(),
            "fmn_overstated": overstated,
            "fmn_eps_bounded": bounded.astype(np.float32),
            "fmn_eps_untargeted": untargeted.numpy(),
            "fmn_eps_ho": ho_eps.numpy(),
            "fmn_eps_ensemble": ensemble_distances(fmn_eps, ho_eps, fmn_config is not None).numpy(),
            "fmn_ho_config": pd.array(
                [fmn_config.describe() if fmn_config else pd.NA] * len(y), dtype="string"
            ),
        }
    )


def tune_model_fmn(model, x, y, threat: ThreatModel, settings: EvalSettings) -> FMNConfig | None:
    """HO-FMN's attack for `model`: searched on the first fmn_tuning_samples of (x, y), the same
    samples and seed wherever it runs; None when tuning is off."""
    if not settings.fmn_tuning_trials:
        return None
    n = settings.fmn_tuning_samples
    config, _ = tune_hofmn(
        model,
        x[:n],
        y[:n],
        norm=threat.norm,
        steps=settings.fmn_tuning_steps,
        trials=settings.fmn_tuning_trials,
        attacks=settings.fmn_tuning_attacks or HOFMN_ATTACKS,
        seed=settings.seed,
    )
    return config


def ho_fmn_distances(model, x, y, correct, fmn_eps, threat, settings, config) -> torch.Tensor:
    """HO-FMN's own distance of each correctly classified sample: its tuned attack's, NaN where it
    found nothing (so it may be above plain FMN's, or missing where FMN found one); the
    misclassified keep FMN's (0, or the signed distance on a dense model). NaN everywhere without
    tuning."""
    out = torch.full((len(y),), float("nan"))
    if config is None:
        return out
    out[:] = fmn_eps
    right = torch.nonzero(correct).flatten()
    if len(right):
        out[right], _, _ = fmn(model, x[right], y[right], config=config, **fmn_arguments(threat, settings))
    return out


def ensemble_distances(fmn_eps: torch.Tensor, ho_eps: torch.Tensor, ran: bool) -> torch.Tensor:
    """The ensemble of plain FMN and HO-FMN: per sample the smaller distance either found, NaN
    where neither found one; NaN everywhere when HO-FMN did not run."""
    if not ran:
        return torch.full_like(ho_eps, float("nan"))
    return torch.fmin(fmn_eps, ho_eps)  # a NaN (nothing found) loses to a distance


def fmn_bounds(clean_correct, pgd_correct, aa_robust, fmn_eps, eps: float):
    """A distance is never above what an attack proved: where PGD or AutoAttack broke a correctly
    classified sample at eps and FMN reported a larger distance or none, FMN overstated it, and
    the sample's distance is at most eps. Returns (overstated flags, bounded distances); `aa_robust`
    True where AutoAttack did not run."""
    broken = clean_correct & (~pgd_correct | ~aa_robust)
    overstated = broken & (np.isnan(fmn_eps) | (fmn_eps > eps))
    return overstated, np.where(overstated, eps, fmn_eps)


def untargeted_distances(
    model, x, pred, correct, fmn_eps, threat: ThreatModel, settings: EvalSettings
) -> torch.Tensor:
    """The second reading of the thin-ice paper's negative eps for samples the dense model gets
    wrong: minus the FMN distance out of the predicted class (untargeted), where the default
    reading is minus the distance to the true label (targeted). Correct samples keep theirs."""
    out = fmn_eps.clone()
    wrong = torch.nonzero(~correct).flatten()
    if len(wrong):
        dist, _, _ = fmn(model, x[wrong], pred[wrong], **fmn_arguments(threat, settings))
        out[wrong] = -dist
    return out


def fmn_arguments(threat: ThreatModel, settings: EvalSettings) -> dict:
    """The FMN settings every distance of a block is computed with."""
    return dict(
        norm=threat.norm,
        steps=settings.fmn_steps,
        step_size=settings.fmn_step_size,
        batch_size=int(settings.batch_size),
    )


def autoattack_subset(model, x, y, idx, threat: ThreatModel, settings: EvalSettings, device):
    """AutoAttack on the samples with index < autoattack_samples (all when None); the others get
    <NA>, so AutoAttack on 1,000 samples and FMN on 10,000 can share one table."""
    limit = settings.autoattack_samples
    robust = pd.array([pd.NA] * len(y), dtype="boolean")
    broken_by = pd.array([pd.NA] * len(y), dtype="string")
    chosen = torch.arange(len(y)) if limit is None else torch.nonzero(idx < limit).flatten()
    if len(chosen):
        seed = settings.seed * 1_000_003 + int(idx[0])
        ok, by, _ = autoattack(
            model,
            x[chosen],
            y[chosen],
            eps=threat.eps,
            norm=threat.norm,
            version=settings.autoattack_version,
            seed=seed,
            batch_size=settings.batch_size,
            device=device,
            attacks=settings.autoattack_attacks,
        )
        robust[chosen.numpy()] = ok.numpy()
        broken_by[chosen.numpy()] = list(by)
    return robust, broken_by


def fmn_distances(model, x, y, clean_correct, threat: ThreatModel, settings: EvalSettings, signed: bool):
    """FMN ε per sample (thin-ice convention, Piras et al. 2023, Sec. 3).

    Correctly classified: the distance to the boundary, positive. Misclassified: with `signed`
    (the dense model), minus the distance that makes it predict the true label, found by a targeted
    FMN per true class (secml-torch takes one target per batch); otherwise 0 (already adversarial).
    """
    eps = torch.full((len(y),), float("nan"))
    found = torch.zeros(len(y), dtype=torch.bool)
    kwargs = fmn_arguments(threat, settings)
    right = torch.nonzero(clean_correct).flatten()
    if len(right):
        eps[right], found[right], _ = fmn(model, x[right], y[right], **kwargs)
    wrong = torch.nonzero(~clean_correct).flatten()
    if not signed:
        eps[wrong], found[wrong] = 0.0, True
        return eps, found
    for label in y[wrong].unique().tolist():
        group = wrong[y[wrong] == label]
        dist, ok, _ = fmn(model, x[group], y[group], target=int(label), **kwargs)
        eps[group], found[group] = -dist, ok
    return eps, found
