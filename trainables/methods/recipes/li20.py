"""li20: its authors' recipe, a source per value (trainables/recipes.py)."""

from apgrid.trainables.recipes import GRID_FINETUNE, GRID_PARENT, AuthorsRecipe, Fact, left_open
from apgrid.trainables.recipes import Cited as C

_TAX = "survey taxonomy.json Li20_Li2020Towards"
_WHY = (
    "open: no code of the authors' found (searched code and pages; pralab/AdversarialPruningBenchmark "
    "models/li20.py holds only the architecture) and the paper's experimental section was not readable here; "
    "apgrid's default (grid/spec.py)"
)


RECIPE = AuthorsRecipe(
    reference="Li et al. 2020, Towards Practical Lottery Ticket Hypothesis for Adversarial Training (boosting "
    "tickets; arXiv 2003.05733); no code found",
    parent=left_open(
        _WHY,
        GRID_PARENT,
        trainer=C(
            "fgsm",
            f"{_TAX}: 'B: Pruning step: FGSM (Goodfellow et al. 2015)' (tickets found with FGSM "
            "adversarial training)",
        ),
    ),
    search={},
    finetune=left_open(
        _WHY,
        GRID_FINETUNE,
        trainer=C("pgd", f"{_TAX}: 'B: Training step: AT PGD'"),
    ),
    method={
        "selection": Fact(
            C(
                "global |w| across conv and linear weights, one shot",
                f"{_TAX}: 'Pruning locality: Global', 'criterion: LWM', 'OneShot (1S)'",
            ),
            apgrid="global |w| across conv and linear weights, one shot",
        ),
        "weight_init": Fact(
            C(
                "the ticket rewound to the network's initialisation (lottery ticket)",
                f"{_TAX}: 'B-Methods Pruning Before Training'; paper abstract (tickets trained from their "
                "initialisation)",
            ),
            apgrid="the ticket rewound to the network's initialisation (lottery ticket)",
        ),
        "other": Fact(
            C("the rewound ticket is trained with PGD-AT on the dense network's schedule", _WHY),
            apgrid="the rewound ticket is trained with PGD-AT on the dense network's schedule",
        ),
    },
)
