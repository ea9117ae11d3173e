"""The analysis section of a spec, kept apart from the report so that reading a spec does not
import matplotlib."""

from __future__ import annotations

from dataclasses import dataclass

from apgrid.analysis.transfer import TRANSFER_ATTACKS


@dataclass(frozen=True)
class AnalysisSettings:
    """What the analysis adds beyond the Parquet statistics: these read the stored models again."""

    transfer_attacks: tuple[str, ...] = TRANSFER_ATTACKS  # crafted on each dense model; () for none
    # the first N test samples; None: every evaluated sample, so that differences of a point or
    # two (the compressed-models paper's) are resolvable; each cell gets a 95 % interval
    transfer_samples: int | None = None
    costs: bool = True  # parameters, size, measured latency of every model
    cost_batch_size: int = 128
    slice_samples: int = 2  # Figure 1: S10 and S01 samples sliced per pruned model
    bootstrap_resamples: int = 1000  # for the AUC confidence intervals
