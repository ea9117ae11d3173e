"""The `apgrid` command line: launch, resume, status, query, analyze, list."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from apgrid.analysis.names import SUMMARY_TABLES, TABLES
from apgrid.errors import ApgridError
from apgrid.grid.errors import STORAGE_ERRNOS, GridError
from apgrid.trainables.fields import output_folder, remote_output

EXIT_STOPPED = 1  # stopped part-way by its environment (disk, tracking server, failing trials)
EXIT_BAD_INPUT = 2  # bad input: nothing started, nothing written

DESCRIPTION = """\
apgrid runs adversarial-pruning grids: adversarially train dense models, prune them with each
method at each sparsity, evaluate every model (clean, PGD, AutoAttack, FMN) on sharded test samples,
and write the thin-ice statistics. Results go to MLflow (runs) and Parquet (one row per model and
test sample) in the output folder.

With no spec, `apgrid launch` runs the embedded demo: digits, local Ray, SQLite MLflow in the
output folder."""


def add_until(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--until",
        choices=["dense", "prune", "evaluate"],
        metavar="STAGE",
        help="stop after this stage (dense, prune or evaluate), e.g. train on GPUs "
        "now and evaluate later; `apgrid resume DIR` runs the rest",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="apgrid", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    from apgrid import __version__

    parser.add_argument("--version", action="version", version=f"apgrid {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "launch",
        help="validate a spec and run its grid end to end",
        description="Validate SPEC (default: the embedded demo, grid/examples/demo.yaml) "
        "and run dense -> prune -> evaluate -> analyze. Nothing is "
        "started or written when the spec is invalid. Into the output "
        "folder of the same grid (only resources, max_failures, "
        "evaluation.actors, tracking, storage or analysis changed), it "
        "continues that grid with the new settings, redoing nothing.",
    )
    p.add_argument("spec", nargs="?", help="grid spec YAML (default: the demo)")
    p.add_argument("--output", "-o", help="output folder (overrides the spec's `output`)")
    p.add_argument(
        "--dry-run", action="store_true", help="validate and print the planned models, run nothing"
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        dest="overrides",
        help="override a spec field, validated like the file, e.g. --set "
        "dense.seeds=[0,1] --set evaluation.num_samples=100 (repeatable; VALUE is "
        "read as YAML)",
    )
    add_until(p)

    p = sub.add_parser(
        "resume",
        help="continue an interrupted grid",
        description="Continue the grid in DIR: finished models (found by their "
        "config hash) are skipped, interrupted trials restart from their "
        "last epoch checkpoint, evaluated shards are kept.",
    )
    p.add_argument("dir", help="the grid's output folder")
    add_until(p)

    p = sub.add_parser(
        "status",
        help="stage and trials done / running / failed",
        description="Show each stage's state and, from MLflow, every run's status and attempt number.",
    )
    p.add_argument("dir", help="the grid's output folder")

    p = sub.add_parser(
        "query",
        help="search the grid's MLflow runs",
        description="Search MLflow runs with a simple filter over tags and metrics, "
        "e.g. --where \"method='hydra' and sparsity>=0.9\". Bare names "
        "are looked up as tags (stage, model_id, method, arch, dataset, "
        "sparsity, role, ...) or metrics (clean_acc, pgd_acc, aa_acc, ...).",
    )
    p.add_argument("dir", nargs="?", help="the grid's output folder")
    p.add_argument("--tracking-uri", help="query this tracking server instead of DIR's")
    p.add_argument("--experiment", help="experiment (grid) name; default: DIR's grid, or all")
    p.add_argument("--where", default="", help="filter, e.g. \"method='hydra' and aa_acc>0.5\"")
    p.add_argument("--columns", help="comma-separated columns to show")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")

    p.add_argument(
        "--table",
        help="print an analysis table written by `apgrid analyze` instead of runs: " + ", ".join(TABLES),
    )

    p = sub.add_parser(
        "analyze",
        help="(re)write the report from the results",
        description="Rebuild OUTPUT/report (index.html, report.md, a CSV per table, "
        "PNG figures) from the per-sample Parquet files, and from the "
        "stored models for costs, transfer attacks and decision slices "
        "(settings: the spec's `analysis` section; measurements are "
        "cached in OUTPUT/analysis_cache). Needs no Ray and no MLflow.",
    )
    p.add_argument("dir", help="the grid's output folder")
    p.add_argument(
        "--models",
        nargs="+",
        metavar="PATTERN",
        help="a partial report of these model ids only (shell patterns, e.g. 'hydra-sp95-*' "
        "'dense-*'); their dense parents come along for the thin-ice statistics. It goes to "
        "--output, by default OUTPUT/report-partial/<patterns>, never into OUTPUT/report",
    )
    p.add_argument(
        "--output",
        "-o",
        metavar="DIR",
        help="write the report here (a new or empty folder, or a previous report's, which is replaced)",
    )
    p.add_argument(
        "--format",
        choices=("md", "html", "csv"),
        default="md",
        help="what to print once written: md the Markdown report, html the page's path, csv the main tables",
    )
    p.add_argument(
        "--no-models",
        action="store_true",
        help="statistics from the Parquet only: skip costs, transfer and slices",
    )

    p = sub.add_parser(
        "export",
        help="RobustBench model-info JSON per evaluated model, in RobustBench's tree",
        description="Write OUTDIR/<dataset>/<threat model>/<name>.json for every "
        "evaluated model of the grid in DIR, as RobustBench's model_info "
        "tree holds them (cifar10/Linf/Carmon2019Unlabeled.json): "
        "every field its files carry (clean and AutoAttack accuracy in "
        "percent, eps, architecture, what the paper reported, external, "
        "unreliable, footnote) plus apgrid's under 'apgrid' (method, "
        "sparsity, taxonomy, FMN distance quantiles). A paper's title, "
        "authors, venue and link are empty unless --names gives them.",
    )
    p.add_argument("dir", help="the grid's output folder")
    p.add_argument("outdir", help="where the tree of JSON files goes")
    p.add_argument(
        "--names",
        metavar="FILE",
        help="YAML or JSON mapping model ids to RobustBench's fields: file (the JSON's "
        "name, e.g. Sehwag2020Hydra), name, authors, venue, link, footnote, "
        "additional_data, unreliable, reported, number_forward_passes",
    )

    p = sub.add_parser(
        "compare",
        help="two grids or two models, sample by sample",
        description="Compare evaluations on their shared test samples: two grids' "
        "output folders (models paired by id, e.g. a grid before and "
        "after a change), or two models of the grid in --grid. Per "
        "pair: accuracies (clean, PGD, AutoAttack), how many samples "
        "differ, McNemar's exact test on AutoAttack correctness, and "
        "FMN distances that differ.",
    )
    p.add_argument(
        "a", help="a grid's output folder, or (with --grid) a model: its id, a unique prefix or a pattern"
    )
    p.add_argument("b", help="another grid's output folder, or (with --grid) another model")
    p.add_argument("--grid", help="the output folder holding models A and B")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")

    p = sub.add_parser(
        "list",
        help="list pruning methods, architectures, datasets or examples",
        description="What a spec may name. methods: every pruning method with its "
        "taxonomy (pipeline A after / B before / D during training, "
        "structured or not, local or global scope, criterion) and the "
        "options a spec may set for it. architectures: the CIFAR-variant "
        "models and their parameter counts. datasets: classes, image "
        "size and the eps conventions used with each.",
    )
    p.add_argument("what", choices=("methods", "architectures", "datasets", "examples"))
    p.add_argument("name", nargs="?", help="with `methods`: one method's authors' recipe, a source per value")
    p.add_argument(
        "--markdown", action="store_true", help="with `methods`: docs/design.md's table (generated)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = COMMANDS[args.command](args) or 0
        sys.stdout.flush()  # here, where a reader that left is caught, not at interpreter exit
        return code
    except ApgridError as exc:  # bad input (2) or a grid stopped by its environment (1)
        print(f"apgrid: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:  # `apgrid query ... | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # the shell's code for a process ended by SIGPIPE
    except OSError as exc:  # outside a grid's stages: launching, `apgrid analyze`
        if exc.errno not in STORAGE_ERRNOS:
            raise
        print(f"apgrid: error: cannot write {exc.filename}: {exc.strerror}", file=sys.stderr)
        return EXIT_STOPPED
    except KeyboardInterrupt:
        print("apgrid: interrupted; `apgrid resume DIR` continues where it stopped", file=sys.stderr)
        return 130


def cmd_launch(args) -> int:
    from apgrid.grid.plan import all_models
    from apgrid.grid.runner import launch, preflight
    from apgrid.grid.spec import load_spec

    spec = load_spec(args.spec, output=args.output, overrides=args.overrides)
    if args.dry_run:
        preflight(spec, dry_run=True)
        from apgrid.grid.plan import describe, describe_deviations

        for plan in all_models(spec):
            print(f"{plan.role:7s} {plan.model_id}")
        print(describe(spec))
        print(describe_deviations(spec))
        return 0
    launch(spec, until=args.until)
    return 0


def example_summary(text: str, limit: int = 150) -> str:
    """The first sentence of a spec's header comment, which may run over several lines, cut at a
    word when long ("et al." and "e.g." end no sentence)."""
    header = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        header.append(line.lstrip("#").strip())
    words = " ".join(header).split()
    sentence = []
    for word in words:
        sentence.append(word)
        if word.endswith(".") and word not in ("al.", "e.g.", "i.e.", "vs.") and len(sentence) > 2:
            break
    summary = " ".join(sentence)
    return summary if len(summary) <= limit else summary[: summary.rfind(" ", 0, limit)] + " …"


def print_recipe(name: str) -> int:
    from apgrid.grid.spec import SpecError
    from apgrid.trainables.methods import method
    from apgrid.trainables.recipes import describe

    try:
        m = method(name)
    except ValueError as exc:
        raise SpecError(str(exc)) from None
    print(f"{m.name}: {m.description}")
    if m.recipe is None:
        print("no authors' recipe recorded: a grid trains it with the spec's recipes")
    else:
        print("\n".join(describe(m.recipe)))
    return 0


def cmd_resume(args) -> int:
    from apgrid.grid.runner import resume

    resume(args.dir, until=args.until)
    return 0


def cmd_status(args) -> int:
    from apgrid.grid.objectstore import grid_folder
    from apgrid.grid.runlist import model_runs
    from apgrid.grid.state import STAGES, read_state, tracking_uri

    output = grid_folder(args.dir)
    state = read_state(output)
    print(f"grid {state['name']}  ({output})  driver runs: {state.get('driver_runs', 0)}")
    for stage in STAGES:
        print(f"  {stage:9s} {state.get('stages', {}).get(stage, 'pending')}")
    uri = tracking_uri(output, state)
    if uri is None:
        print("  MLflow: no runs logged yet")
        return 0
    runs = model_runs(uri, state["name"])
    counts: dict[tuple[str, str], int] = {}
    for run in runs:
        counts[(run.stage, run.status)] = counts.get((run.stage, run.status), 0) + 1
    print("  MLflow runs by stage and status:")
    for (stage, status), n in sorted(counts.items()):
        print(f"    {stage:9s} {status:9s} {n}")
    for run in runs:
        if run.attempt > 1:
            print(f"    attempt {run.attempt}: {run.model_id} ({run.stage}, {run.status})")
    return 0


def cmd_query(args) -> int:
    from apgrid.grid.query import format_runs, query_runs, read_table

    if args.table:
        if not args.dir:
            raise GridError("query --table: give the grid's output folder")
        print(
            format_runs(
                read_table(output_folder(args.dir), args.table, args.where, args.columns),
                args.format,
            )
        )
        return 0
    if args.tracking_uri:
        uri, experiment = args.tracking_uri, args.experiment
    elif args.dir:
        from apgrid.grid.objectstore import grid_folder
        from apgrid.grid.state import read_state, tracking_uri

        output = grid_folder(args.dir)
        state = read_state(output)
        uri, experiment = tracking_uri(output, state), args.experiment or state["name"]
        if uri is None:
            raise GridError(f"query: {output} has no MLflow runs yet")
    else:
        raise GridError("query: give the grid's output folder or --tracking-uri")
    runs = query_runs(uri, experiment, args.where, args.columns)
    print(format_runs(runs, args.format))
    return 0


def cmd_analyze(args) -> int:
    from apgrid.grid.analyze import analyze
    from apgrid.grid.runner import load_grid_spec

    spec = load_grid_spec(args.dir)
    paths = analyze(
        spec,
        args.models,
        log=lambda m: print(m, file=sys.stderr),
        with_models=not args.no_models,
        output=args.output,
    )
    if args.format == "md":
        print(paths["report.md"].read_text())
    elif args.format == "html":
        print(paths["index.html"])
    else:
        for name in SUMMARY_TABLES:
            if f"{name}.csv" in paths:
                print(f"# {name}\n{paths[f'{name}.csv'].read_text()}")
    print(f"wrote {len(paths)} files to {paths['index.html'].parent}", file=sys.stderr)
    return 0


def cmd_list(args) -> int:
    from apgrid.grid.spec import SpecError

    if args.name is not None and args.what != "methods":
        raise SpecError(f"list {args.what}: takes no name (only `list methods NAME` does)")
    if args.what == "methods" and args.name is not None:
        return print_recipe(args.name)
    if args.what == "methods" and args.markdown:
        from apgrid.trainables.methods import methods_table

        print(methods_table())
        return 0
    if args.what == "methods":
        from apgrid.trainables.methods import PRUNING_METHODS

        print(f"{'method':15s} {'pipeline':8s} {'structured':10s} {'scope':6s} criterion")
        for m in PRUNING_METHODS.values():
            print(f"{m.name:15s} {m.pipeline:8s} {str(m.structured):10s} {m.scope:6s} {m.criterion}")
            print(f"{'':15s} {m.description}")
            if m.search_phase:
                print(f"{'':15s} search phase: its authors' search recipe, under the spec's prune.search")
            if m.options:
                opts = ", ".join(f"{k}={v}" for k, v in m.defaults().items())
                print(f"{'':15s} options: {opts}")
        print(
            "pipeline: A = prune after training, B = before training, D = during training (Piras et al. 2024)"
        )
    elif args.what == "architectures":
        from apgrid.grid.spec import takes_images
        from apgrid.trainables.data import DATASETS
        from apgrid.trainables.models import ARCHITECTURES, parameter_count

        for name, make in ARCHITECTURES.items():
            takes = [d for d in DATASETS if takes_images(name, d)]
            channels = DATASETS[takes[0]].image_shape[0] if takes else 3
            count = parameter_count(make(channels, 10)) / 1e6
            print(f"{name:20s} {count:7.2f}M parameters (10 classes); takes {', '.join(takes) or 'none'}")
    elif args.what == "examples":
        from apgrid.grid.spec import EXAMPLES

        for path in sorted(EXAMPLES.glob("*.yaml")):
            first = example_summary(path.read_text())
            print(f"{path.name:26s} {first}")
        print(f"(in {EXAMPLES}; `apgrid launch NAME.yaml` runs one)")
    else:
        from apgrid.trainables.data import DATASETS

        for d in DATASETS.values():
            shape = "x".join(map(str, d.image_shape))
            print(f"{d.name:9s} {d.num_classes:3d} classes  {shape:8s}  eps: {d.eps_conventions}")
    return 0


def cmd_export(args) -> int:
    from apgrid.analysis.export import export, load_names
    from apgrid.grid.api import Grid

    grid = Grid(args.dir)  # a folder or an s3:// URI
    samples = grid.samples()
    if samples.empty:
        raise GridError(f"export: {args.dir} has no evaluated models yet")
    names = load_names(Path(args.names).expanduser(), set(samples["model_id"])) if args.names else {}
    store = grid.model_store
    cards = {m: store.card(m) for m in samples["model_id"].unique() if store.exists(m)}
    folder = Path(args.outdir).expanduser()
    paths = export(samples, cards, folder, names)
    trees = sorted({str(p.parent.relative_to(folder)) for p in paths})
    print(f"wrote {len(paths)} model-info files to {folder} ({', '.join(trees)})")
    return 0


def cmd_compare(args) -> int:
    from apgrid.analysis.compare import compare_models
    from apgrid.grid.api import Grid
    from apgrid.grid.query import QueryError, format_runs, resolve_model

    def rows_of(folder):
        rows = Grid(folder).samples()  # a folder or an s3:// URI
        if rows.empty:
            raise GridError(f"compare: {folder} has no evaluated models")
        return rows

    if args.grid:
        rows = rows_of(args.grid)
        try:
            a, b = (resolve_model(m, rows["model_id"].unique()) for m in (args.a, args.b))
        except QueryError as exc:
            raise GridError(f"compare: {exc} (in {args.grid})") from None
        table = compare_models(rows, rows, [(a, b)])
    else:
        for folder in (args.a, args.b):
            if not remote_output(folder) and not (Path(folder) / "grid.json").is_file():
                raise GridError(
                    f"compare: {folder} is not a grid's output folder (give two "
                    f"folders, or two model ids with --grid DIR)"
                )
        a, b = rows_of(args.a), rows_of(args.b)
        shared = sorted(set(a["model_id"]) & set(b["model_id"]))
        if not shared:
            raise GridError(
                "compare: the two grids share no model id (the same configs give the "
                "same ids); compare two models with --grid DIR A B"
            )
        table = compare_models(a, b, [(m, m) for m in shared])
    print(format_runs(table, args.format))
    return 0


COMMANDS = {
    "launch": cmd_launch,
    "resume": cmd_resume,
    "status": cmd_status,
    "query": cmd_query,
    "analyze": cmd_analyze,
    "list": cmd_list,
    "compare": cmd_compare,
    "export": cmd_export,
}

if __name__ == "__main__":
    sys.exit(main())
