"""The analysis section of a spec, kept apart from the report so that reading a spec does not
import matplotlib."""

from __future__ import annotations

from dataclasses import dataclass, field

from apgrid.analysis.transfer import TRANSFER_ATTACKS

# How Table 2's AUC intervals are computed: DeLong's variance (the default: one sort a test) or a
# percentile bootstrap of each population (a sort a resample, ~100x slower); thin_ice.auc_smaller
AUC_INTERVALS = ("delong", "bootstrap")


@dataclass(frozen=True)
class AnalysisSettings:
    """What the analysis adds beyond the Parquet statistics: these read the stored models again."""

    # crafted on each dense model; () for none
    transfer_attacks: tuple[str, ...] = field(
        default=TRANSFER_ATTACKS, metadata={"choices": TRANSFER_ATTACKS}
    )
    # the first N test samples; None: every evaluated sample, so that differences of a point or
    # two (the compressed-models paper's) are resolvable; each cell gets a 95 % interval
    transfer_samples: int | None = field(default=None, metadata={"min": 1})
    costs: bool = True  # parameters, size, measured latency of every model
    cost_batch_size: int = field(default=128, metadata={"min": 1})
    slice_samples: int = field(
        default=2, metadata={"min": 0}
    )  # Figure 1: S10 and S01 samples sliced per pruned model
    # Figure 2 (a scatter per pruned model, ~0.15 s each) for at most this many pruned models, the
    # first in the report's order; None: every one. Table 2 holds every model whatever it is
    figure2_models: int | None = field(default=128, metadata={"min": 0})
    # Table 2's AUC intervals: DeLong's variance (one sort a test), or a percentile bootstrap of
    # `bootstrap_resamples` resamples of each population (as many sorts; 0: no interval)
    auc_interval: str = field(default="delong", metadata={"choices": AUC_INTERVALS})
    bootstrap_resamples: int = field(default=1000, metadata={"min": 0})  # with auc_interval: bootstrap
    # processes for the per-model statistics (analysis.parallel): None: every core, up to 8
    workers: int | None = field(default=None, metadata={"min": 1})
