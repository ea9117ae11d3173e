"""filter-gm: its authors' recipe, a source per value (trainables/recipes.py)."""

from apgrid.trainables.methods.recipes import filter_l1
from apgrid.trainables.recipes import AuthorsRecipe, Fact
from apgrid.trainables.recipes import Cited as C

_L1 = filter_l1
_FPGM = "he-y/filter-pruning-geometric-median pruning_cifar10.py"

_method = _L1.method(
    "geometric-median distance (sum of Euclidean distances to the layer's other filters)",
    "geometric-median distance (FPGMImportance(p=2, group_reduction='first', normalizer=None))",
    f"; criterion as {_FPGM} Mask.get_filter_similar (dist_type l2: cdist euclidean, sum over filters)",
)

RECIPE = AuthorsRecipe(
    reference=(
        "Vora et al. 2023 (arXiv 2308.08160; no public code found; NNCF filter_pruning with geometric_median "
        "importance); criterion: He et al. 2019, FPGM (CVPR 2019), code he-y/filter-pruning-geometric-median"
    ),
    parent=_L1.PARENT,
    search={},
    finetune=_L1.FINETUNE,
    method={
        **_method,
        "other": Fact(
            C(
                _method["other"].authors.value
                + "; FPGM itself (He et al.) prunes softly: every epoch (--epoch_prune 1) "
                "the selected filters are zeroed but keep training and may recover (CIFAR-10 from a pretrained model: "
                "lr 0.01, 200 epochs, x0.2 at 60/120/160, wd 5e-4, clean training)",
                _method["other"].authors.source + f"; {_FPGM} do_mask / do_similar_mask each epoch; "
                "he-y/filter-pruning-geometric-median scripts/pruning_cifar10.sh pruning_pretrain_resnet56",
            ),
            apgrid=_method["other"].apgrid,
        ),
    },
)
