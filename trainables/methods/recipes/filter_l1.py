"""filter-l1: its authors' recipe, a source per value (trainables/recipes.py)."""

from apgrid.trainables.recipes import AuthorsRecipe, Fact
from apgrid.trainables.recipes import Cited as C

# Vora et al. 2023 publish no code (none found); their pruning is NNCF's filter_pruning, whose
# documented defaults (openvinotoolkit/nncf docs/compression_algorithms/Pruning.md) are cited where
# the paper (summary: /work/shared/papers/compressed-2308.08160-summary.md) is silent.
_P = "Vora et al. 2023 (arXiv 2308.08160)"
_NNCF = "openvinotoolkit/nncf docs/compression_algorithms/Pruning.md"
_SUM = "/work/shared/papers/compressed-2308.08160-summary.md"
_NOCODE = f"open: {_P} publish no training code or schedule ({_SUM} Limitations: fine-tuning schedule and optimiser not detailed)"

PARENT = {
    "trainer": C(
        "clean",
        f"{_P} abstract: 'models not previously exposed to adversarial training' (ResNet50, DenseNet121, "
        f"MobileNetV1 on CIFAR-10/100; {_SUM})",
    ),
    "epochs": C(10, _NOCODE),
    "lr": C(0.05, _NOCODE),
}

FINETUNE = {
    "trainer": C(
        "clean",
        f"{_SUM} Method Summary: NNCF filter pruning, after each pruning step the models are "
        "fine-tuned; abstract: pruning 'optimized for accuracy and performance', no adversarial training",
    ),
    "epochs": C(5, _NOCODE),
    "lr": C(0.01, _NOCODE),
    "optimizer": C(
        "sgd", f"open: not stated by {_P}; {_NNCF}: 'In all our pruning experiments we used SGD optimizer'"
    ),
}


def method(criterion: str, apgrid_criterion: str, extra_source: str = "") -> dict:
    return {
        "selection": Fact(
            C(
                f"per layer (all_weights false): the filters of smallest {criterion} zeroed; BN of zeroed filters "
                "zeroed; removed only at OpenVINO export",
                f"{_SUM} Method Summary (NNCF filter pruning, {criterion}); {_NNCF} filter_pruning params "
                f"(all_weights false, prune_batch_norms true by default){extra_source}",
            ),
            apgrid=f"per layer: the filters of smallest {apgrid_criterion} physically removed with torch-pruning "
            "(coupled BN and next-layer channels go with them)",
        ),
        "layers": Fact(
            C(
                "prunable convs except the first conv and downsample (stride > 1) convs (NNCF defaults)",
                f"{_NNCF} prune_first_conv false, prune_downsample_convs false by default; open whether {_P} "
                "changed them",
            ),
            apgrid="every conv (the first and the strided/shortcut convs included); the classifier is not pruned",
        ),
        "other": Fact(
            C(
                "iterative: NNCF's exponential schedule raises the pruning level every epoch over pruning_steps "
                "epochs, re-choosing the zeroed filters each epoch, then freezes the mask and fine-tunes; the paper "
                "reports 10-50% levels",
                f"{_NNCF} 'Exponential scheduler' (default schedule); {_SUM} Method Summary (10-50% pruning, fine-tuning "
                "after each step)",
            ),
            apgrid="`steps` equal increments of the target (default 1: one-shot), each removing filters for good, "
            "fine-tuning between with a fresh optimiser",
        ),
    }


RECIPE = AuthorsRecipe(
    reference=(
        f"{_P}, Benchmarking Adversarial Robustness of Compressed Deep Learning Models (no public code found; "
        "NNCF filter_pruning with L1 importance); L1 criterion: Li et al. 2017, Pruning Filters for Efficient ConvNets"
    ),
    parent=PARENT,
    search={},
    finetune=FINETUNE,
    method=method(
        "L1 norm",
        "L1 norm (MagnitudeImportance(p=1, group_reduction='first', normalizer=None): the "
        "conv's own filter, not Torch-Pruning's default group mean)",
    ),
)
