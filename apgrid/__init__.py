"""apgrid: adversarial-pruning grids on Ray Tune, with AutoAttack and FMN, MLflow and Parquet.

The public Python API is small:

    import apgrid
    g = apgrid.open("runs/demo")            # a finished (or running) grid's output folder
    g.samples(method="hydra")               # per-sample rows as a DataFrame (filters: column=value)
    g.models(), g.runs(), g.table("table2_thin_ice")
    apgrid.launch("grid/examples/demo.yaml", output="runs/demo")
    model = g.load_model(model_id)          # a stored model, masks applied, eval mode, CPU
    apgrid.evaluate(model, dataset="digits", threat_model="Linf:0.1", num_samples=100)

The packages under it: `apgrid.trainables` (data, models, attacks, training, masks, pruning
methods, evaluation: no Ray, no MLflow), `apgrid.analysis` (statistics and report from Parquet)
and `apgrid.grid` (the Ray Tune grid, MLflow tracking, the Parquet store and the command line).
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

try:
    __version__ = metadata.version("apgrid")
except metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

# In a source checkout this folder sits beside grid/, trainables/ and analysis/, which the
# installed package maps to apgrid.grid, ... (pyproject's package-dir). Python started in the
# checkout finds this folder first; let it find the subpackages there too.
_checkout = Path(__file__).resolve().parent.parent
if (_checkout / "grid" / "cli.py").is_file() and str(_checkout) not in __path__:
    __path__.append(str(_checkout))


def open(output: str | Path):  # shadows the builtin inside this module only: apgrid.open(folder)
    """The grid in an output folder, for reading its results (see apgrid.grid.api.Grid)."""
    from apgrid.grid.api import Grid

    return Grid(output)


def launch(spec=None, output: str | Path | None = None, until: str | None = None, log=print):
    """Validate and run a grid: `spec` is a YAML path, a mapping in the YAML's layout, or None for
    the embedded demo; returns the opened Grid once it has run (or stopped after `until`)."""
    from apgrid.grid.api import launch as _launch

    return _launch(spec, output=output, until=until, log=log)


def evaluate(model, dataset: str = "cifar10", threat_model=None, **options):
    """The grid's evaluation of any torch.nn.Module, no spec needed: one row per test sample
    (clean, PGD, AutoAttack, FMN; the columns of a grid's Parquet rows) as a DataFrame.

    dataset: digits, cifar10, cifar100 or svhn (`root=` the folder its files are in, `download=`);
    threat_model: "Linf:8/255", {"norm": "L2", "eps": 0.5}, or None for the dataset's usual
    (Linf 8/255; 0.1 on digits); options: num_samples (default: the whole test split), device
    ("auto": CUDA when present), batch_size, name and arch (the rows' model_id and arch),
    signed_fmn (the dense models' signed FMN distances; False: as a pruned model's), and any
    field of a spec's evaluation section (pgd_steps, autoattack_attacks, fmn_steps, ...).
    Bad values get the spec's one-line errors. The model is left on its device and mode."""
    from apgrid.grid.api import evaluate as _evaluate

    return _evaluate(model, dataset, threat_model, **options)


__all__ = ["__version__", "open", "launch", "evaluate"]
