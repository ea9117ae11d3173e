"""twinrep-channels: its authors' recipe, a source per value (trainables/recipes.py)."""

from apgrid.trainables.methods.recipes import twinrep
from apgrid.trainables.recipes import AuthorsRecipe, Fact
from apgrid.trainables.recipes import Cited as C

_TW = twinrep.RECIPE
_R = "UCAS-LCH/Twin-Rep"
_T = f"{_R} train.py"

RECIPE = AuthorsRecipe(
    reference=(
        "Li, Qiu et al. 2023 (AAAI 2023), TwinRep structured; code: "
        f"{_R} (train.py --pruning-type structure, --layer-type twin or channel)"
    ),
    parent={},
    search=_TW.search,
    finetune=_TW.finetune,
    method={
        "layers": Fact(
            C(
                "conv filters; the linear layer is not pruned",
                f"{_T} structured_pruning: only weight.ndimension() == 4",
            ),
            apgrid="conv filters; the linear layer is not pruned",
        ),
        "weight_init": Fact(
            C(
                "w = A W with A an out x out matrix mixing the filters (--layer-type channel), or the elementwise "
                "twins (--layer-type twin); both from independent Kaiming-uniform inits",
                f"open: {_R} models/layers.py ChannelConv / TwinConv; which layer type the paper's structured runs "
                "use is not in the released code",
            ),
            apgrid="w = v * g with one scalar g per output channel, started so that the initial weight is unchanged",
        ),
        "selection": Fact(
            C(
                "one global threshold on the filters' L2 norms (of the reparametrised weight) over all convs; each "
                "layer keeps at least one filter; filters zeroed by the mask, not removed",
                f"{_T} structured_pruning, group_lasso",
            ),
            apgrid="each layer's smallest-L2 filters removed at its share of the target (torch-pruning, per layer)",
        ),
        "other": _TW.method["other"],
    },
)
