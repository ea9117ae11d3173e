"""Two runs of one grid's report side by side: the leaderboard's AutoAttack accuracy per method and
sparsity (with its 95 % interval), the dense parent, and the survey's findings, as Markdown. For a
grid re-run after the methods changed (issue 33: survey-cifar-tiny.yaml before and after).

    python benchmarks/before_after.py benchmarks/results/2026-12-01-survey-cifar-tiny \\
        runs/survey-cifar-tiny/report

Each folder holds the report's leaderboard.csv and findings.csv (apgrid analyze writes them).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd


def read(folder: Path, name: str) -> pd.DataFrame:
    path = folder / f"{name}.csv"
    if not path.is_file():
        sys.exit(f"before_after: {path} not found (run apgrid analyze on the grid first)")
    return pd.read_csv(path)


def leaderboard(before: pd.DataFrame, after: pd.DataFrame) -> str:
    keys = ["method", "sparsity"]
    both = before.merge(after, on=keys, how="outer", suffixes=("_b", "_a"), indicator=True)
    lines = [
        "| sparsity | method | clean before → after | AutoAttack before [95 % CI] (rank) | after | Δ AA |",
        "|---|---|---|---|---|---|",
    ]
    for _, r in both.sort_values(["sparsity", "rank_a"]).iterrows():
        b = after_b = "—"
        if r["_merge"] != "right_only":
            b = f"{r.aa_acc_b:.3f} [{r.aa_low_b:.3f}, {r.aa_high_b:.3f}] (#{int(r.rank_b)})"
        if r["_merge"] != "left_only":
            after_b = f"{r.aa_acc_a:.3f} [{r.aa_low_a:.3f}, {r.aa_high_a:.3f}] (#{int(r.rank_a)})"
        delta = f"{r.aa_acc_a - r.aa_acc_b:+.3f}" if r["_merge"] == "both" else "—"
        clean = f"{r.clean_acc_b:.3f} → {r.clean_acc_a:.3f}" if r["_merge"] == "both" else "—"
        lines.append(f"| {r.sparsity:g} | {r.method} | {clean} | {b} | {after_b} | {delta} |")
    return "\n".join(lines)


def findings(before: pd.DataFrame, after: pd.DataFrame) -> str:
    lines = [
        "| finding | sparsity | before: A vs B, AA, discordant, p | supports | after | supports |",
        "|---|---|---|---|---|---|",
    ]

    def verdict(r) -> str:
        return "—" if pd.isna(r.supports) else str(bool(r.supports))

    def says(r) -> str:
        pair = f"{r.method_a} vs {r.method_b}: {r.aa_a:.3f} vs {r.aa_b:.3f}"
        return f"{pair}, {r.only_a}/{r.only_b}, p = {r.p:.3g}"

    both = before.merge(after, on=["finding", "sparsity"], suffixes=("_b", "_a"), how="outer")
    for _, r in both.sort_values(["finding", "sparsity"]).iterrows():
        b = pd.Series({k.removesuffix("_b"): v for k, v in r.items() if k.endswith("_b")})
        a = pd.Series({k.removesuffix("_a"): v for k, v in r.items() if k.endswith("_a")})
        sides = f"{says(b)} | {verdict(b)} | {says(a)} | {verdict(a)}"
        lines.append(f"| {r.finding} | {r.sparsity:g} | {sides} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("before", type=Path, help="the first run's report folder (CSV files)")
    parser.add_argument("after", type=Path, help="the re-run's report folder")
    args = parser.parse_args(argv)
    board_b, board_a = read(args.before, "leaderboard"), read(args.after, "leaderboard")
    for arch in sorted(set(board_a["arch"])):
        dense = [
            f"{t}: clean {d.dense_clean_acc:.3f}, AA {d.dense_aa_acc:.3f}"
            for t, board in (("before", board_b), ("after", board_a))
            for d in board[board["arch"] == arch].head(1).itertuples()
        ]
        print(f"Dense parent ({arch}): " + "; ".join(dense) + "\n")
    print(leaderboard(board_b, board_a) + "\n")
    print(findings(read(args.before, "findings"), read(args.after, "findings")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
