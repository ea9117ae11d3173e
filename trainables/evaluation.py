"""Per-sample robustness evaluation: clean, PGD-k, AutoAttack, FMN distances.

Samples are processed in fixed blocks aligned to the sample index (block b holds samples
[b*block_size, (b+1)*block_size)). Shards are whole blocks, each block's randomness is seeded by its
first sample index (PGD's random start by each sample's own index), and every block is computed the
same way wherever it runs: one shard or many give identical rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from trainables.attacks import autoattack, fmn, logit_margin, pgd, sample_noise


@dataclass(frozen=True)
class ThreatModel:
    norm: str = "Linf"
    eps: float = 0.1


@dataclass(frozen=True)
class EvalSettings:
    num_samples: int | None = None  # None: the whole test split
    autoattack_samples: int | None = None  # AutoAttack on the first N only (None: all of them)
    pgd_steps: int = 10
    pgd_step_size: float | None = None  # default 2.5 eps / steps (Madry et al.)
    autoattack_version: str = "standard"
    fmn_steps: int = 200
    fmn_step_size: float = 1.0
    seed: int = 0
    # Samples per block: AutoAttack's iteration counts are per call (Square alone makes 5,000
    # queries), so larger blocks spread them over more samples. benchmarks/evaluation.py on a
    # CIFAR CNN, one thread: 0.95 s/sample at 25, 0.45 at 100, 0.36 at 250 and 500.
    block_size: int = 250
    batch_size: int = 500


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


def evaluate_samples(model: nn.Module, x: torch.Tensor, y: torch.Tensor, start: int,
                     threat: ThreatModel, settings: EvalSettings, signed_fmn: bool,
                     device: torch.device | str = "cpu") -> pd.DataFrame:
    """Evaluate samples start .. start+len(y)-1 block by block; one row per sample."""
    frames = []
    for b_start, b_end in block_ranges(start, start + len(y), settings.block_size):
        sl = slice(b_start - start, b_end - start)
        frames.append(evaluate_block(model, x[sl], y[sl], b_start, threat, settings, signed_fmn,
                                     device))
    return pd.concat(frames, ignore_index=True)


def evaluate_block(model: nn.Module, x: torch.Tensor, y: torch.Tensor, first_idx: int,
                   threat: ThreatModel, settings: EvalSettings, signed_fmn: bool,
                   device: torch.device | str = "cpu") -> pd.DataFrame:
    model.eval()
    idx = torch.arange(first_idx, first_idx + len(y))
    xd, yd = x.to(device), y.to(device)
    with torch.inference_mode():
        logits = model(xd)
    clean_pred = logits.argmax(1).cpu()
    clean_correct = clean_pred == y

    step = settings.pgd_step_size or 2.5 * threat.eps / settings.pgd_steps
    noise = sample_noise(idx, x.shape[1:], settings.seed, threat.eps)
    x_pgd = pgd(model, xd, yd, eps=threat.eps, steps=settings.pgd_steps, step_size=step,
                norm=threat.norm, init_noise=noise)
    with torch.inference_mode():
        pgd_correct = (model(x_pgd).argmax(1).cpu() == y) & clean_correct

    aa_robust, broken_by = autoattack_subset(model, x, y, idx, threat, settings, device)

    fmn_eps, fmn_found = fmn_distances(model, x, y, clean_correct, threat, settings, signed_fmn)
    return pd.DataFrame({
        "sample_idx": idx.numpy(), "label": y.numpy(), "clean_pred": clean_pred.numpy(),
        "clean_correct": clean_correct.numpy(),
        "logit_margin": logit_margin(logits.float(), yd).cpu().numpy(),
        "pgd_correct": pgd_correct.numpy(), "aa_correct": aa_robust,
        "aa_broken_by": pd.array(broken_by, dtype="string"),
        "fmn_eps": fmn_eps.numpy(), "fmn_found": fmn_found.numpy(),
    })


def autoattack_subset(model, x, y, idx, threat: ThreatModel, settings: EvalSettings, device):
    """AutoAttack on the samples with index < autoattack_samples (all when None); the others get
    <NA>, so AutoAttack on 1,000 samples and FMN on 10,000 can share one table."""
    limit = settings.autoattack_samples
    robust = pd.array([pd.NA] * len(y), dtype="boolean")
    broken_by = pd.array([pd.NA] * len(y), dtype="string")
    chosen = torch.arange(len(y)) if limit is None else torch.nonzero(idx < limit).flatten()
    if len(chosen):
        seed = settings.seed * 1_000_003 + int(idx[0])
        ok, by, _ = autoattack(model, x[chosen], y[chosen], eps=threat.eps, norm=threat.norm,
                               version=settings.autoattack_version, seed=seed,
                               batch_size=settings.batch_size, device=device)
        robust[chosen.numpy()] = ok.numpy()
        broken_by[chosen.numpy()] = list(by)
    return robust, broken_by


def fmn_distances(model, x, y, clean_correct, threat: ThreatModel, settings: EvalSettings,
                  signed: bool):
    """FMN ε per sample (thin-ice convention, Piras et al. 2023, Sec. 3).

    Correctly classified: the distance to the boundary, positive. Misclassified: with `signed`
    (the dense model), minus the distance that makes it predict the true label, found by a targeted
    FMN per true class (secml-torch takes one target per batch); otherwise 0 (already adversarial).
    """
    eps = torch.full((len(y),), float("nan"))
    found = torch.zeros(len(y), dtype=torch.bool)
    kwargs = dict(norm=threat.norm, steps=settings.fmn_steps, step_size=settings.fmn_step_size,
                  batch_size=settings.batch_size)
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

