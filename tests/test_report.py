"""The analysis stage: statistics against scipy / statsmodels, the leaderboard, model costs, transfer
attacks, and the report as Markdown, as a self-contained HTML page, and in a headless browser."""

import base64
import os
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import mannwhitneyu, norm
from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar

from apgrid.analysis.costs import model_cost
from apgrid.analysis.names import TABLES
from apgrid.analysis.report import AnalysisSettings, ModelAccess, write_report
from apgrid.analysis.tables import leaderboard, seed_table, thin_ice_table
from apgrid.analysis.thin_ice import auc_smaller, mcnemar
from apgrid.analysis.transfer import transfer_table
from apgrid.trainables.data import load_dataset
from apgrid.trainables.masks import apply_masks, prunable_layers
from apgrid.trainables.methods import PRUNING_METHODS
from apgrid.trainables.models import build_model
from tests.helpers import thin_ice_rows

# -- statistics ------------------------------------------------------------------------------


def test_two_sided_p_and_mcnemar_equal_scipy_and_statsmodels():
    rng = np.random.default_rng(3)
    x, y = rng.normal(0, 1, 80), rng.normal(0.4, 1, 120)
    test = auc_smaller(x, y, resamples=200)
    assert test.p_two_sided == pytest.approx(mannwhitneyu(x, y, alternative="two-sided").pvalue)
    dense, pruned = rng.random(300) < 0.8, rng.random(300) < 0.7
    table = [
        [(dense & pruned).sum(), (dense & ~pruned).sum()],
        [(~dense & pruned).sum(), (~dense & ~pruned).sum()],
    ]
    ours = mcnemar(dense, pruned)
    assert ours.lost == table[0][1] and ours.gained == table[1][0]
    assert ours.p_value == pytest.approx(sm_mcnemar(table, exact=True).pvalue)
    assert mcnemar(dense, dense).p_value == 1.0


def test_bootstrap_interval_covers_the_true_auc():
    """For X ~ N(0,1), Y ~ N(d,1) the AUC P(X<Y) is Phi(d/sqrt 2); a 95 % interval should cover it
    in about 95 % of the data sets (we accept 85 %, 40 draws), and shrink with more samples."""
    true_auc = norm.cdf(0.5 / np.sqrt(2))
    rng = np.random.default_rng(0)
    covered, widths = 0, []
    for _ in range(40):
        t = auc_smaller(
            rng.normal(0, 1, 60),
            rng.normal(0.5, 1, 60),
            resamples=400,
            seed=int(rng.integers(1 << 30)),
            interval="bootstrap",
        )
        assert t.ci_low <= t.auc <= t.ci_high
        covered += t.ci_low <= true_auc <= t.ci_high
        widths.append(t.ci_high - t.ci_low)
    assert covered >= 34
    big = auc_smaller(rng.normal(0, 1, 960), rng.normal(0.5, 1, 960), resamples=400, interval="bootstrap")
    assert big.ci_high - big.ci_low < 0.5 * np.median(widths)


def samples_fixture():
    """Two dense models (two archs, seeds) and pruned children, in the Parquet schema."""
    frames = []
    for arch, seed in (("digits-cnn", 0), ("digits-cnn", 1)):
        dense, pruned = thin_ice_rows(seed=seed, n=120)
        common = {
            "dataset": "digits",
            "arch": arch,
            "seed": seed,
            "norm": "Linf",
            "eps": 0.1,
            "autoattack_version": "standard",
            "pgd_steps": 5,
            "fmn_steps": 50,
        }
        d_id = f"dense-{arch}-seed{seed}-aaaa"
        rng = np.random.default_rng(seed)
        for frame, model_id, role, method, sparsity in (
            (dense, d_id, "dense", "dense", 0.0),
            (pruned, f"prune-lwm-global-{seed}-bbbb", "pruned", "lwm-global", 0.9),
            (
                pruned.assign(clean_correct=~pruned["clean_correct"] & (rng.random(120) < 0.3)),
                f"prune-filter-l1-{seed}-cccc",
                "pruned",
                "filter-l1",
                0.5,
            ),
        ):
            correct = frame["clean_correct"].to_numpy()
            frames.append(
                frame.assign(
                    model_id=model_id,
                    dense_model_id=d_id,
                    role=role,
                    method=method,
                    sparsity=sparsity,
                    sparsity_measured=sparsity,
                    pgd_correct=correct & (rng.random(120) < 0.7),
                    aa_correct=pd.array(correct & (rng.random(120) < 0.6), dtype="boolean"),
                    fmn_eps=np.abs(frame["fmn_eps"]) + 0.01,
                    **common,
                )
            )
    return pd.concat(frames, ignore_index=True)


def test_thin_ice_table_has_intervals_and_mcnemar():
    table = thin_ice_table(samples_fixture(), resamples=200)
    assert len(table) == 4
    for _, row in table.iterrows():
        assert row["ci_low_S10<S11"] <= row["auc_S10<S11"] <= row["ci_high_S10<S11"]
        assert 0 <= row["mcnemar_p_clean"] <= 1 and 0 <= row["mcnemar_p_aa"] <= 1
        assert row["p_S10<S11"] <= row["p2_S10<S11"] + 1e-12 or row["auc_S10<S11"] < 0.5


def test_table1_reads_clean_accuracy_on_the_autoattack_samples():
    """The thin-ice paper's A.A. Acc. and A.A. Rob. share their samples (the first 1,000): with
    AutoAttack on the first 40 of 120 samples, Table 1's clean accuracy is those 40's."""
    from apgrid.analysis.tables import model_table, reevaluation_table

    samples = samples_fixture()
    first = samples.groupby("model_id").cumcount() < 40
    samples["aa_correct"] = samples["aa_correct"].where(first, pd.NA)
    samples.loc[~first, "clean_correct"] = True  # the unattacked samples must not count
    table = reevaluation_table(model_table(samples))
    for _, row in table.iterrows():
        rows = samples[(samples["model_id"] == row["model_id"]) & first]
        assert row["aa_samples"] == 40
        assert row["clean_acc_on_aa_samples"] == pytest.approx(rows["clean_correct"].mean())
        assert row["clean_acc_on_aa_samples"] < row["clean_acc"]


def test_seed_table_and_leaderboard():
    from apgrid.analysis.tables import model_table

    models = model_table(samples_fixture())
    seeds = seed_table(models)
    cell = seeds[(seeds["method"] == "lwm-global")].iloc[0]
    values = models[models["method"] == "lwm-global"]["aa_acc"]
    assert cell["seeds"] == 2
    assert cell["aa_acc_mean"] == pytest.approx(values.mean())
    assert cell["aa_acc_std"] == pytest.approx(values.std())
    taxonomy = {m.name: m.taxonomy for m in PRUNING_METHODS.values()}
    board = leaderboard(models, taxonomy)
    assert set(board["structure"]) == {"structured", "unstructured"}
    l1 = board[board["method"] == "filter-l1"].iloc[0]
    assert l1["criterion"] == PRUNING_METHODS["filter-l1"].criterion and l1["scope"]
    for _, group in board.groupby(["dataset", "arch", "structure", "sparsity"]):
        assert list(group["rank"]) == list(range(1, len(group) + 1))
        assert group["aa_acc"].is_monotonic_decreasing
    from apgrid.analysis.report import _off_target

    assert "sparsity_measured" in board and _off_target(board).startswith("Every model")
    half_pruned = board.assign(sparsity_measured=board["sparsity"].where(board["method"] != "filter-l1", 0.1))
    assert "filter-l1 at" in _off_target(half_pruned) and "measured 10.0%" in _off_target(half_pruned)


# -- costs and transfer ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def tiny_models(ds):
    torch.manual_seed(0)

    def make():
        return build_model("digits-cnn", 1, ds.num_classes, ds.mean, ds.std).eval()

    dense = make()
    masked = make()
    masked.load_state_dict(dense.state_dict())
    apply_masks(
        masked,
        {
            name: (layer.weight.abs() > layer.weight.abs().quantile(0.9)).float()
            for name, layer in prunable_layers(masked)
        },
    )
    for _, layer in prunable_layers(masked):
        torch.nn.utils.prune.remove(layer, "weight")
    return dense, masked


def test_costs_count_nonzeros_and_sizes(digits):
    dense, masked = tiny_models(digits)
    c_dense = model_cost(dense, (1, 8, 8), torch.device("cpu"), batch_size=16, repeats=3)
    c_masked = model_cost(masked, (1, 8, 8), torch.device("cpu"), batch_size=16, repeats=3)
    assert c_dense.parameters == c_masked.parameters == sum(p.numel() for p in dense.parameters())
    assert c_masked.nonzero < 0.2 * c_dense.nonzero
    assert c_masked.sparse_bytes < c_masked.file_bytes
    assert c_masked.file_bytes > 0.99 * c_dense.file_bytes  # masks alone do not shrink the file
    assert c_dense.latency_ms > 0 and c_dense.throughput > 0


def test_transfer_table_white_box_is_strongest(digits):
    dense, masked = tiny_models(digits)
    x, y = digits.x_test[:40], digits.y_test[:40]
    table = transfer_table(
        {"dense": dense},
        {"dense": dense, "masked": masked},
        x,
        y,
        eps=0.3,
        attacks=("fgsm", "pgd"),
        log=lambda m: None,
    )
    assert len(table) == 4 and set(table["attack"]) == {"fgsm", "pgd"}
    pgd = table[table["attack"] == "pgd"].set_index("target")
    assert pgd.loc["dense", "white_box"] and pgd.loc["dense", "adv_acc"] <= pgd.loc["dense", "clean_acc"]
    assert pgd.loc["dense", "linf_median"] <= 0.3 + 1e-6
    assert (table["adv_acc_low"] <= table["adv_acc"]).all() and (
        table["adv_acc"] <= table["adv_acc_high"]
    ).all()


def test_transfer_interval_is_wilsons_and_narrows_with_samples():
    from apgrid.analysis.transfer import proportion_interval

    low, high = proportion_interval(40, 100)  # Wilson (1927): 0.4 +- ~0.094 at n = 100
    assert low == pytest.approx(0.3094, abs=1e-3) and high == pytest.approx(0.4980, abs=1e-3)
    assert proportion_interval(400, 1000)[1] - proportion_interval(400, 1000)[0] < high - low
    assert proportion_interval(0, 50)[0] == 0.0 and proportion_interval(50, 50)[1] == 1.0


# -- the report ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def report(tmp_path_factory, digits):
    samples = samples_fixture()
    dense, masked = tiny_models(digits)
    models = {m: (dense if m.startswith("dense") else masked) for m in samples["model_id"].unique()}
    access = ModelAccess(
        load=models.__getitem__,
        test_data=lambda n: (digits.x_test[:n], digits.y_test[:n]),
        input_shape=(1, 8, 8),
        device=torch.device("cpu"),
        log=lambda m: None,
    )
    settings = AnalysisSettings(
        transfer_attacks=("fgsm", "universal"),
        transfer_samples=30,
        cost_batch_size=16,
        slice_samples=1,
        bootstrap_resamples=100,
    )
    folder = tmp_path_factory.mktemp("report") / "report"
    return folder, write_report(samples, folder, "fixture", settings, access)


def test_report_has_every_section_table_and_csv(report):
    folder, paths = report
    md = paths["report.md"].read_text()
    for title in (
        "Table 1",
        "Table 2",
        "Across seeds",
        "Leaderboard",
        "Security curves",
        "Figure 1",
        "Transfer attacks",
        "Cost of the models",
    ):
        assert f"## {title}" in md
    for name in (
        "table1_reevaluation",
        "table2_thin_ice",
        "leaderboard",
        "seeds",
        "costs",
        "transfer",
        "models",
    ):
        assert not pd.read_csv(folder / f"{name}.csv").empty
    assert {p.stem for p in folder.glob("*.csv")} <= set(TABLES)  # the one list names them all
    costs = pd.read_csv(folder / "costs.csv")
    assert (costs.loc[costs["kind"] != "dense", "params_kept"] < 0.5).all()


def test_html_report_is_self_contained(report):
    folder, paths = report
    page = paths["index.html"].read_text()
    images = re.findall(r'<img src="data:image/png;base64,([^"]+)"', page)
    pngs = sorted(folder.glob("*.png"))
    assert len(images) == len(pngs) >= 1 + 4 + 4 + 2  # curves, fig2, fig1, transfer heat-maps
    assert all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in images)
    assert page.count("<table>") >= 8 and 'src="http' not in page and "<script" not in page


def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_report_renders_in_headless_chromium(report, tmp_path):
    """Debian's chromium loads the page: its DOM holds the tables and the decoded images."""
    if not _chromium():
        if os.environ.get("APGRID_REQUIRE_CHROMIUM"):
            pytest.fail("chromium is required here (APGRID_REQUIRE_CHROMIUM) but not installed")
        pytest.skip("chromium not installed (apt-get install chromium)")
    _, paths = report
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--user-data-dir=" + str(tmp_path / "p")]
    dom = subprocess.run(
        [_chromium(), *flags, "--dump-dom", paths["index.html"].as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    assert dom.count("<table>") >= 8 and dom.count("<img ") >= 11
    assert "Table 2: samples on thin ice" in dom
    shot = tmp_path / "page.png"
    subprocess.run(
        [
            _chromium(),
            *flags,
            f"--screenshot={shot}",
            "--window-size=1200,2400",
            paths["index.html"].as_uri(),
        ],
        capture_output=True,
        timeout=120,
    )
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"))
    assert pixels.std() > 10  # not a blank page


# -- a report to publish from: vector figures, captions, labels, intervals, units, LaTeX -------


def _capture_figures(monkeypatch) -> list:
    """The figures the plots draw, kept open (plots close each once saved)."""
    from apgrid.analysis import plots

    kept = []
    monkeypatch.setattr(plots.plt, "close", kept.append)
    return kept


def test_every_figure_has_a_pdf_and_an_svg_with_text_and_a_caption(report):
    import xml.etree.ElementTree as ET

    folder, paths = report
    pngs = sorted(folder.glob("*.png"))
    for png in pngs:
        assert png.with_suffix(".pdf").read_bytes()[:5] == b"%PDF-"
        svg = ET.parse(png.with_suffix(".svg")).getroot()  # valid XML
        words = " ".join(t.text or "" for t in svg.iter("{http://www.w3.org/2000/svg}text"))
        assert words.strip(), f"{png.stem}: its SVG's text is outlines, not text"
    page = paths["index.html"].read_text()
    assert page.count("<figcaption>") == len(pngs)
    latex = paths["figures.tex"].read_text()
    assert latex.count("\\caption{") == len(pngs)
    assert all(f"\\includegraphics[width=\\linewidth]{{{p.stem}.pdf}}" in latex for p in pngs)
    assert paths["report.md"].read_text().count("*Figure 2, ") == len(list(folder.glob("fig2_*.png")))


def test_every_table_has_a_booktabs_latex_file(report):
    """No TeX here: the structure a booktabs table needs, and nothing LaTeX would choke on."""
    folder, paths = report
    tables = {p.stem for p in folder.glob("*.csv") if p.stat().st_size > 1}  # not the empty ones
    shown = tables - {"models"} | {"model_key", "transfer_matrix"}
    assert {p.stem for p in folder.glob("*.tex")} == shown | {"figures"}
    for name in shown:
        tex = (folder / f"{name}.tex").read_text()
        for command in ("\\begin{tabular}", "\\toprule", "\\midrule", "\\bottomrule", "\\caption{"):
            assert tex.count(command) == 1, (name, command)
        body = re.sub(r"\\label\{[^}]*\}", "", tex.split("\n", 1)[1])  # past the comment line
        assert not re.search(r"(?<!\\)[_%#]", body), name  # escaped (& separates cells)
        assert not re.search("[εΔ−×]", body), name  # spelt out for pdflatex
    assert "lwm-global 90\\% digits-cnn s0" in (folder / "table1_reevaluation.tex").read_text()


def test_model_labels_are_short_and_unique():
    from apgrid.analysis.names import model_labels

    rows = [
        {"model_id": "dense-cifar-tiny-s0-1a2b3c4d", "role": "dense", "method": "dense", "arch": "cifar-tiny"}
        | {"sparsity": float("nan"), "seed": 0},
        {"model_id": "hydra-sp95-cifar-tiny-s0-5e6f7a8b", "role": "pruned", "method": "hydra"}
        | {"arch": "cifar-tiny", "sparsity": 0.95, "seed": 0},
        {"model_id": "hydra-sp95-cifar-tiny-s0-99990000", "role": "pruned", "method": "hydra"}
        | {"arch": "cifar-tiny", "sparsity": 0.95, "seed": 0},
        {"model_id": "ckpt-rn18-77", "role": "pruned", "method": "checkpoint", "arch": "resnet18"}
        | {"sparsity": 0.995, "seed": None},
    ]
    labels = model_labels(rows)
    assert labels["dense-cifar-tiny-s0-1a2b3c4d"] == "dense cifar-tiny s0"
    assert labels["ckpt-rn18-77"] == "checkpoint 99.5% resnet18"
    twins = [labels["hydra-sp95-cifar-tiny-s0-5e6f7a8b"], labels["hydra-sp95-cifar-tiny-s0-99990000"]]
    assert twins == ["hydra 95% cifar-tiny s0 #5e6f7a", "hydra 95% cifar-tiny s0 #999900"]


def test_tables_and_figures_name_models_by_label_and_the_key_gives_the_ids(report):
    """Hashed ids wrapped over five lines of Table 1: the page names models by label, and only
    the key (label -> id) holds the ids."""
    folder, paths = report
    ids = pd.read_csv(folder / "models.csv")[["model_id", "label"]]
    page = paths["index.html"].read_text()
    body, key = page.split("<h3>Model key", 1)
    for model_id, label in ids.itertuples(index=False):
        assert model_id not in body, model_id
        assert f"<td>{label}</td><td>{model_id}</td>" in key
    table1 = body.split("<h3>Robustness as reported vs AutoAttack</h3>", 1)[1].split("</table>")[0]
    assert "<td>lwm-global 90% digits-cnn s0</td>" in table1
    fig2 = next(folder.glob("fig2_prune-lwm-global-0-*.svg")).read_text()
    assert "lwm-global 90% digits-cnn s0" in fig2


def test_table1_shows_each_accuracy_with_its_wilson_interval(report):
    from apgrid.analysis.transfer import proportion_interval

    folder, paths = report
    t = pd.read_csv(folder / "table1_reevaluation.csv")
    models = pd.read_csv(folder / "models.csv").set_index("model_id")
    for _, row in t.iterrows():
        for column, n in (("clean_acc", "num_samples"), ("aa_acc", "aa_samples"), ("pgd_acc", "num_samples")):
            k = models.loc[row["model_id"], n]
            expected = proportion_interval(round(row[column] * k), k)
            assert (row[f"{column}_low"], row[f"{column}_high"]) == pytest.approx(expected)
    page = paths["index.html"].read_text()
    table1 = page.split("<h3>Robustness as reported vs AutoAttack</h3>", 1)[1].split("</table>")[0]
    for header in ("clean [95% CI]", "AutoAttack [95% CI]", "PGD [95% CI]", "FMN at ε [95% CI]"):
        assert f"<th>{header}</th>" in table1
    row = t.iloc[0]
    shown = f"{row['aa_acc']:.3f} [{row['aa_acc_low']:.3f}, {row['aa_acc_high']:.3f}]"
    assert f"<td>{shown}</td>" in table1
    assert table1.count("<th>") <= 10  # fits a page


def test_accuracies_are_fractions_everywhere_as_the_captions_say(report):
    """The leaderboard wrote percentages ("91.2% / 45.0%"), every other table fractions."""
    folder, paths = report
    for csv in (p for p in folder.glob("*.csv") if p.stat().st_size > 1):
        table = pd.read_csv(csv)
        for column in table.columns:
            if ("acc" in column or column.startswith("aa_")) and table[column].dtype.kind == "f":
                assert table[column].dropna().between(0, 1).all(), (csv.stem, column)
    leader = pd.read_csv(folder / "leaderboard.csv")
    assert not leader["clean / AA"].str.contains("%").any()
    assert {"clean_low", "clean_high", "aa_low", "aa_high"} <= set(leader.columns)
    assert "Accuracies are fractions of the test samples" in paths["index.html"].read_text()


def test_cost_table_names_the_throughput_unit(report):
    folder, _ = report
    costs = pd.read_csv(folder / "costs.csv")
    assert "throughput" not in costs.columns and (costs["throughput_samples_per_s"] > 0).all()


def test_decision_slices_keep_every_label_and_title_inside_the_image(digits, tmp_path):
    """Figure 1's x labels ran off the bottom of the PNG ("FMN direction (Linf"): the image's
    outer pixels are blank on every side (nothing cut at an edge), and the SVG holds the label."""
    from PIL import Image

    from apgrid.analysis import plots

    dense, masked = tiny_models(digits)
    x, y = digits.x_test[:2], digits.y_test[:2]
    x_adv = x + torch.tensor([0.0075, 0.12]).view(2, 1, 1, 1)  # a small and a large FMN step
    title = "hydra-sp95-digits-cnn-seed0-db406dcd"
    path = plots.decision_slices(dense, masked, x, y, x_adv, ["S10", "S10"], title, tmp_path / "f.png")
    pixels = np.asarray(Image.open(path).convert("L"))
    for side in (pixels[:3], pixels[-3:], pixels[:, :3], pixels[:, -3:]):
        assert side.min() == 255
    assert ">FMN direction (Linf)</text>" in path.with_suffix(".svg").read_text()


def test_figure2_marks_the_threat_eps(tmp_path, monkeypatch):
    from apgrid.analysis import plots

    kept = _capture_figures(monkeypatch)
    rng = np.random.default_rng(0)
    joined = pd.DataFrame(
        {"population": rng.choice(["S00", "S01", "S10", "S11"], 80), "eps": rng.normal(0, 0.2, 80)}
    ).assign(dense_margin=lambda d: d["eps"] * 10)
    plots.thin_ice_scatter(joined, "hydra 95% cifar-tiny s0", 0.031, tmp_path / "f.png")
    vertical = {
        line.get_xdata()[0] for line in kept[0].axes[0].get_lines() if len(set(line.get_xdata())) == 1
    }
    assert {0.031, -0.031} <= vertical
    legend = [t.get_text() for t in kept[0].axes[0].get_legend().get_texts()]
    assert "threat ε = ±0.031" in legend


def test_transfer_heatmap_sets_unbounded_attacks_apart_and_marks_them(tmp_path, monkeypatch):
    """CW and DeepFool are minimum-norm, unbounded: their rows go below a rule, marked."""
    from apgrid.analysis import plots

    kept = _capture_figures(monkeypatch)
    attacks = ["cw", "fgsm", "deepfool", "pgd"]
    table = pd.DataFrame(
        {"source": "d-1", "attack": attacks, "target": "d-1", "adv_acc": [0.0, 0.5, 0.1, 0.4]}
    )
    plots.transfer_heatmap(table, "d-1", tmp_path / "heat.png", {"d-1": "dense digits-cnn s0"})
    ax = kept[0].axes[0]
    rows = [t.get_text() for t in ax.get_yticklabels()]
    assert rows == ["fgsm (≤ ε)", "pgd (≤ ε)", "cw (unbounded)", "deepfool (unbounded)"]
    rules = [line.get_ydata()[0] for line in ax.get_lines() if len(set(line.get_ydata())) == 1]
    assert rules == [1.5]
    assert "dense digits-cnn s0" in ax.get_title()


@pytest.mark.filterwarnings("error::UserWarning")
def test_transfer_heatmap_leaves_room_for_one_attack_and_long_model_names(tmp_path):
    """A one-row heatmap used to be too short for its 45-degree target names: matplotlib gave up
    on the layout (a warning) and the names ran off the figure."""
    from apgrid.analysis.plots import transfer_heatmap

    targets = ["dense-cifar-tiny-s0-1a2b3c4d", "prune-boundary-aware-cifar-tiny-s0-sp0.95-5e6f7a8b"]
    table = pd.DataFrame({"source": targets[0], "attack": "fgsm", "target": targets, "adv_acc": [0.4, 0.6]})
    path = transfer_heatmap(table, targets[0], tmp_path / "heat.png")
    assert path.stat().st_size > 0


def test_leaderboard_intervals_adjacent_tests_and_findings():
    """Built so that lwm-global (global) clearly beats lwm-local and hydra on AutoAttack in one
    cell: the adjacent test says so, and both findings are supported there."""
    from apgrid.analysis.tables import findings, model_table

    rng = np.random.default_rng(0)
    n, rows = 400, []
    robust = {"lwm-global": 0.6, "hydra": 0.4, "lwm-local": 0.39}
    for method, rate in robust.items():
        aa = rng.random(n) < rate
        rows.append(
            pd.DataFrame(
                {
                    "model_id": f"{method}-m",
                    "dense_model_id": "d",
                    "role": "pruned",
                    "dataset": "cifar10",
                    "arch": "resnet18",
                    "method": method,
                    "sparsity": 0.9,
                    "sparsity_measured": 0.9,
                    "seed": 0,
                    "norm": "Linf",
                    "eps": 8 / 255,
                    "sample_idx": np.arange(n),
                    "label": 0,
                    "clean_pred": 0,
                    "clean_correct": True,
                    "logit_margin": 1.0,
                    "pgd_correct": aa,
                    "aa_correct": aa,
                    "fmn_eps": 0.1,
                    "fmn_found": True,
                }
            )
        )
    samples = pd.concat(rows, ignore_index=True)
    board = leaderboard(model_table(samples), {m.name: m.taxonomy for m in PRUNING_METHODS.values()}, samples)
    assert list(board["method"]) == ["lwm-global", "hydra", "lwm-local"]
    assert (board["aa_low"] < board["aa_acc"]).all() and (board["aa_acc"] < board["aa_high"]).all()
    assert board.loc[0, "p_above_next"] < 1e-4  # 0.6 vs 0.4 on 400 paired samples
    assert board.loc[1, "p_above_next"] > 0.05 and np.isnan(board.loc[2, "p_above_next"])
    verdicts = findings(board, samples).set_index("finding")
    assert verdicts.loc["a: global beats local", "supports"]
    assert verdicts.loc["b: global LWM matches complex", "supports"]
    assert verdicts.loc["a: global beats local", "method_b"] == "hydra"


# -- the report streamed from the Parquet folder ---------------------------------------------


def write_partitions(samples: pd.DataFrame, output) -> None:
    """The rows as a grid's samples folder: one hive partition a model."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for model_id, rows in samples.groupby("model_id"):
        folder = output / "samples" / "grid=fixture" / f"model_id={model_id}"
        folder.mkdir(parents=True)
        table = pa.Table.from_pandas(rows.drop(columns=["model_id"]), preserve_index=False)
        pq.write_table(table, folder / "part-0.parquet")


@pytest.mark.parametrize("interval", ["delong", "bootstrap"])
def test_streamed_report_equals_the_one_from_every_row(tmp_path, interval):
    """`apgrid analyze` reads one model (or one dense/pruned pair) at a time: every table equals
    the one computed from all rows in one DataFrame, as the analysis read them before; no read
    holds more than one model's rows."""
    from apgrid.analysis.samples import PartitionedSamples
    from apgrid.grid.store import partition_files, read_samples

    samples = samples_fixture()
    tuned = samples["model_id"].str.contains("lwm")  # HO-FMN ran on these
    samples["fmn_eps_ho"] = np.where(tuned, samples["fmn_eps"] * 0.9, np.nan)
    samples["fmn_ho_config"] = np.where(tuned, "ce/sgd", None)
    samples["autoattack_attacks"] = "apgd-ce,apgd-t"
    write_partitions(samples, tmp_path)
    reads = []

    class Counted(PartitionedSamples):
        def _read(self, model_id, columns):
            rows = super()._read(model_id, columns)
            reads.append(len(rows))
            return rows

    settings = AnalysisSettings(bootstrap_resamples=100, auc_interval=interval)
    paths = write_report(Counted(partition_files(tmp_path)), tmp_path / "streamed", "fixture", settings)
    write_report(read_samples(tmp_path), tmp_path / "frame", "fixture", settings)
    assert max(reads) == 120 and len(reads) <= 8 * samples["model_id"].nunique()
    for name in TABLES:
        if (tmp_path / "frame" / f"{name}.csv").is_file():
            a = (tmp_path / "streamed" / f"{name}.csv").read_text()
            assert a == (tmp_path / "frame" / f"{name}.csv").read_text(), name
    assert sorted(p.name for p in (tmp_path / "streamed").iterdir()) == sorted(
        p.name for p in (tmp_path / "frame").iterdir()
    )
    md = paths["report.md"].read_text()
    assert md == (tmp_path / "frame" / "report.md").read_text()
    assert "HO-FMN" in md and "(apgd-ce, apgd-t only)" in md
    method = "bootstrap interval (100 resamples" if interval == "bootstrap" else "DeLong's variance"
    assert method in md


def test_figure2_is_drawn_for_at_most_figure2_models(tmp_path):
    """A scatter per pruned model costs ~0.15 s: a grid of hundreds draws the first N, says so,
    and Table 2 keeps every model."""
    settings = AnalysisSettings(figure2_models=1, transfer_attacks=(), costs=False)
    paths = write_report(samples_fixture(), tmp_path / "report", "fixture", settings)
    assert len(list((tmp_path / "report").glob("fig2_*.png"))) == 1
    assert len(pd.read_csv(tmp_path / "report" / "table2_thin_ice.csv")) == 4
    assert "Figure 2 is drawn for the first 1 of the 4 pruned models" in paths["report.md"].read_text()


def test_report_on_several_processes_equals_the_one_in_this_process(tmp_path):
    """analysis.workers: the per-model statistics and figures run in forked processes that each
    read their own partitions; every table, figure and the report's text are those of one
    process (only the settings line differs), and the work did run in other processes."""
    import resource

    from apgrid.analysis.parallel import MIN_ITEMS
    from apgrid.grid.store import open_samples

    one = samples_fixture()
    copies = [
        one.assign(model_id=one["model_id"] + f"-{k}", dense_model_id=one["dense_model_id"] + f"-{k}")
        for k in range(4)
    ]
    samples = pd.concat(copies, ignore_index=True)
    assert samples["model_id"].nunique() >= MIN_ITEMS
    write_partitions(samples, tmp_path)
    reports = {}
    for workers in (1, 2):
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime
        settings = AnalysisSettings(workers=workers, transfer_attacks=(), costs=False)
        folder = tmp_path / f"workers{workers}"
        paths = write_report(open_samples(tmp_path), folder, "fixture", settings)
        children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime - before
        assert (children > 0) == (workers > 1)
        reports[workers] = folder, paths["report.md"].read_text().replace(f'"workers": {workers}', "")
    (serial, text1), (parallel, text2) = reports[1], reports[2]
    assert text1 == text2
    assert len(pd.read_csv(serial / "table2_thin_ice.csv")) == 16
    for path in serial.iterdir():
        if path.suffix == ".csv":
            assert path.read_text() == (parallel / path.name).read_text(), path.name
    assert sorted(p.name for p in serial.iterdir()) == sorted(p.name for p in parallel.iterdir())
