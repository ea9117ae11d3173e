"""The report's table names: the one list the CLI, the Python API and the report name them from
(no imports: the CLI reads it at start)."""

# Every table the report writes, one CSV each (OUTPUT/report/NAME.csv)
TABLES = {
    "table1_reevaluation": "robustness as reported vs AutoAttack (thin-ice Table 1)",
    "table2_thin_ice": "the thin-ice populations, AUCs and tests (thin-ice Table 2)",
    "leaderboard": "methods ranked by AutoAttack per cell (the survey's)",
    "comparisons": "the survey's two findings, cell by cell",
    "findings": "the findings' verdicts",
    "seeds": "mean and deviation over seeds",
    "costs": "parameters, size, latency (needs the models)",
    "transfer": "transfer attacks from the dense models (needs the models)",
    "methods": "each method's departures from its authors' recipe",
    "models": "one row per model",
}
SUMMARY_TABLES = ("table1_reevaluation", "table2_thin_ice", "leaderboard", "costs", "transfer")
