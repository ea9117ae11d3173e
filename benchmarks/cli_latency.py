"""Latency of the read-only commands on a grid folder: `apgrid status` and `apgrid query`, each a
fresh process, as a user types them. Prints the median and the fastest of --repeats runs per
command, and which heavy packages each one imported; with --baseline, the same figures for
another checkout (e.g. the commit before the lazy imports) beside them.

    python benchmarks/cli_latency.py runs/demo
    python benchmarks/cli_latency.py runs/demo --baseline ../apgrid-before --repeats 7

Target (issue 35): status and query <= 1.5 s on the demo. Runs alternate between checkouts within a
repeat, so a busy machine slows them alike.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HEAVY = ("ray", "torch", "mlflow", "matplotlib", "pandas", "pyarrow", "sqlalchemy")
REPORT_IMPORTS = (
    "import sys, runpy; sys.argv = ['apgrid', *sys.argv[1:]]\n"
    "try:\n    runpy.run_module('apgrid.grid.cli', run_name='__main__')\n"
    "except SystemExit:\n    pass\n"
    f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})), file=sys.stderr)"
)


def commands(grid: str) -> dict[str, list[str]]:
    return {"status": ["status", grid], "query": ["query", grid, "--format", "csv"]}


def run_once(checkout: Path, args: list[str]) -> tuple[float, list[str]]:
    python = checkout / ".venv" / "bin" / "python"
    start = time.perf_counter()
    done = subprocess.run(
        [str(python), "-c", REPORT_IMPORTS, *args], cwd=checkout, capture_output=True, text=True
    )
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{checkout}: apgrid {' '.join(args)} failed: {done.stderr.strip()[-300:]}")
    return elapsed, json.loads(done.stderr.strip().splitlines()[-1].replace("'", '"'))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("grid", help="a grid's output folder (e.g. runs/demo)")
    parser.add_argument("--baseline", type=Path, help="another checkout with its own .venv, timed alike")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    grid = str(Path(args.grid).resolve())
    checkouts = {"now": Path(__file__).resolve().parent.parent}
    if args.baseline:
        checkouts = {"baseline": args.baseline.resolve(), **checkouts}
    times = {(c, cmd): [] for c in checkouts for cmd in commands(grid)}
    imported = {}
    for _ in range(args.repeats):
        for cmd, argv in commands(grid).items():
            for name, checkout in checkouts.items():
                elapsed, imported[name, cmd] = run_once(checkout, argv)
                times[name, cmd].append(elapsed)
    print(f"{'command':8s} {'checkout':9s} {'median s':>8s} {'fastest s':>9s}  heavy imports")
    figures = {}
    for (name, cmd), values in times.items():
        median, fastest = statistics.median(values), min(values)
        figures[f"{cmd}_{name}_median_s"] = round(median, 3)
        print(f"{cmd:8s} {name:9s} {median:8.2f} {fastest:9.2f}  {', '.join(imported[name, cmd]) or '-'}")
    print(json.dumps({"grid": grid, "repeats": args.repeats, **figures}))


if __name__ == "__main__":
    main()
