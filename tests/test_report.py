"""The training curve, the report's labels, and the Snakemake report rendered in headless Chromium."""

import html.parser
import json
import os
import re
import shutil
import subprocess

import h5py
import matplotlib.image
import numpy as np
import pytest

from conftest import snakemake, unavailable
from sae import SaeError, curve, h5io, labels
from sae.sweep import records, scaling


def fake_model(path, iterations=40, resumed_from=()):
    """A model.h5 in the real layout: a decreasing cost, a gradient norm, seconds."""
    rng = np.random.default_rng(0)
    it = np.arange(1, iterations + 1)
    history = np.column_stack([0.35 + 30 * np.exp(-it / 3), 20 * np.exp(-it / 5) + 1e-3, 0.01 * it])
    attrs = {
        "cost": history[-1, 0],
        "iterations": iterations,
        "max_iterations": iterations,
        "resumed_from": np.array(resumed_from, dtype=np.int64),
        "evaluations": iterations + 3,
        "ranks": 2,
        "train_seconds": 0.25,
        "side": 8,
        "samples": 2000,
    }
    params = {"W1": rng.normal(size=(25, 64)), "W2": rng.normal(size=(64, 25)), "b1": np.zeros(25)}
    h5io.write_model(path, {**params, "b2": np.zeros(64)}, history, attrs)
    return history, attrs


# --- The training curve ---------------------------------------------------------------------------


def test_history_round_trips_and_summary_states_the_run(tmp_path):
    history, _ = fake_model(tmp_path / "model.h5", resumed_from=[17])
    read, read_attrs = h5io.read_history(tmp_path / "model.h5")
    assert np.array_equal(read, history)
    s = curve.summary(read, read_attrs)
    assert s["cost"] == history[-1, 0] and s["first_cost"] == history[0, 0]
    assert (s["iterations"], s["evaluations"], s["ranks"], s["resumes"]) == (40, 43, 2, [17])
    text = curve.describe(s)
    assert f"final cost {history[-1, 0]:.6f} after 40 iterations, 43 evaluations" in text
    assert "2 ranks, loop 0.25 s" in text and "resume after iteration 17" in text
    assert "resume" not in curve.describe({**s, "resumes": []})
    # model files written before the list: one number, 0 for not resumed
    assert curve.resumes(np.int64(17)) == [17] and curve.resumes(np.int64(0)) == []


def test_empty_history_and_missing_history_are_one_line_errors(tmp_path):
    history, attrs = fake_model(tmp_path / "model.h5")
    with pytest.raises(SaeError, match="history is empty"):
        curve.summary(history[:0], attrs)
    with h5py.File(tmp_path / "model.h5", "a") as f:
        del f["history"]
    with pytest.raises(SaeError, match="missing dataset history"):
        h5io.read_history(tmp_path / "model.h5")


@pytest.mark.parametrize("resumes", [[17], [9, 26]])
def test_curve_png_marks_every_resume_point(tmp_path, resumes):
    history, attrs = fake_model(tmp_path / "model.h5", resumed_from=resumes)
    s = curve.summary(history, attrs)
    curve.plot(history, s, tmp_path / "resumed.png")
    curve.plot(history, {**s, "resumes": []}, tmp_path / "plain.png")
    resumed = matplotlib.image.imread(tmp_path / "resumed.png")[..., :3]
    plain = matplotlib.image.imread(tmp_path / "plain.png")[..., :3]
    assert resumed.shape == plain.shape and resumed.shape[1] >= 900 and resumed.std() > 0.05
    # Only the dashed line and its note differ: a narrow vertical band through both panels.
    columns = np.flatnonzero(np.abs(resumed - plain).max(axis=(0, 2)) > 0.2)
    assert 0 < len(columns) and not list(tmp_path.glob(".*tmp*"))
    rows = np.flatnonzero(np.abs(resumed - plain).max(axis=(1, 2)) > 0.2)
    assert rows.max() - rows.min() > 0.6 * resumed.shape[0]  # the line crosses both panels
    # one dashed line per resume: columns that differ in (nearly) every row of the lower panel
    lower = np.abs(resumed - plain)[int(0.6 * resumed.shape[0]) : int(0.85 * resumed.shape[0])].max(axis=2)
    lines = np.flatnonzero((lower > 0.2).mean(axis=0) > 0.3)
    assert len(np.flatnonzero(np.diff(lines) > 3)) + 1 == len(resumes), lines


# --- Labels: what the report states, from the run's own files ---------------------------------------


def test_training_and_filters_labels_quote_the_model(tmp_path):
    history, _ = fake_model(tmp_path / "model.h5", resumed_from=[17])
    t = labels.training(tmp_path / "model.h5")
    assert t == {
        "cost": f"{history[-1, 0]:.6f}",
        "iterations": "40",
        "evaluations": "43",
        "ranks": "2",
        "loop": "0.25 s",
        "resumed": "after iteration 17",
    }
    assert labels.filters(tmp_path / "model.h5") == {
        "features": "25",
        "patch": "8 × 8 px",  # noqa: RUF001
        "cost": f"{history[-1, 0]:.6f}",
    }


def sweep_rows():
    """runtimes.csv rows of a 1- and 2-rank sweep of 25 hidden units at two sizes (1.6x and 1.9x faster)."""
    rows = []
    for n, t1, t2 in ((1000, 1.0, 0.625), (2000, 1.9, 1.0)):
        for p, t in ((1, t1), (2, t2)):
            row = {**dict.fromkeys(records.RUN_COLUMNS, 0.0), "precision": "float32"}
            row.update(ranks=p, hidden=25, samples=n, repeat=1, evaluations=50, iterations=40, block_size=128)
            row.update(side=8, loop_seconds_max=t, compute_seconds_mean=0.8 * t)
            row.update(compute_seconds_max=0.85 * t, optimizer_seconds_max=0.1 * t)
            rows.append(row)
    return rows


def test_sweep_labels_quote_speedup_efficiency_breakdown_and_model(tmp_path):
    rows = sweep_rows()
    records.write_csv(tmp_path / "runtimes.csv", rows, records.RUN_COLUMNS)
    records.write_csv(tmp_path / "scaling.csv", scaling.scaling(rows), scaling.SCALING_COLUMNS)
    assert labels.speedup(tmp_path / "scaling.csv") == {
        "figure": "speedup",
        "measured": "1.60× on 2 ranks (h = 25, N = 1,000), 1.90× on 2 ranks (h = 25, N = 2,000)",  # noqa: RUF001
    }
    assert labels.efficiency(tmp_path / "scaling.csv")["measured"] == (
        "0.80 on 2 ranks (h = 25, N = 1,000), 0.95 on 2 ranks (h = 25, N = 2,000)"
    )
    shares = labels.breakdown(tmp_path / "runtimes.csv")["measured"]
    parts = "compute / imbalance / communication / optimizer"
    assert shares == f"{parts}: 80.0% / 5.0% / 5.0% / 10.0% on 2 ranks (h = 25, N = 2,000)"
    fit = {"side": 8, "hidden": [16, 25], "alpha": 1.75e-6, "beta": 1.42e-10, "sharing": 0.12}
    fit.update(compute_per_patch_param=0.0, compute_per_patch=3.05e-7, compute_fixed_param=0.0)
    fit.update(compute_fixed=0.0, optimizer_per_value=0.0, optimizer_fixed=2.17e-4)
    checks = [{"relative_error": 0.012}, {"relative_error": -0.018}]
    predictions = [
        {"hidden": h, "ranks": p, "samples": n, "speedup": s, "efficiency": s / p}
        for h in (16, 25)
        for p, n, s in ((16, 10000, 9.6 + h), (16, 160000, 14.6 + h), (1024, 10**8, 1012.0))
    ]
    (tmp_path / "model.json").write_text(
        json.dumps({"model": fit, "validation": checks, "predictions": predictions})
    )
    assert labels.model(tmp_path / "model.json")["measured"] == (
        "at h = 25: c = 305 ns per patch and evaluation, t_opt = 217 µs on one rank; α = 1.75 µs,"  # noqa: RUF001
        " β = 0.142 ns/byte, sharing ω = 0.12; measured loops within ±1.8%; predicted speedup, a core"
        " per rank: 34.6 on 16 ranks (h = 25, N = 10,000), 39.6 on 16 ranks (h = 25, N = 160,000)"
    )


# --- The workflow's default target and its report, in a real browser --------------------------------


@pytest.fixture(scope="module")
def reported(small_run):
    """`snakemake --cores 2` (the default target) with the small test config (the session's run,
    conftest.small_run), then `snakemake --report`."""
    folder, config, _ = small_run
    proc = snakemake(folder, "--configfile", config, "--report", "results/report.html")
    return folder, proc


def test_default_target_builds_filters_and_training_curve(reported):
    folder, _ = reported
    png = matplotlib.image.imread(folder / "results" / "training.png")
    assert png.shape[1] >= 900 and png[..., :3].std() > 0.05
    assert (
        "wrote results/training.png: final cost" in (folder / "results/logs/training_curve.log").read_text()
    )
    assert (folder / "results" / "filters.png").stat().st_size > 0


def test_report_holds_both_figures_and_no_sweep_before_the_sweep(reported):
    folder, proc = reported
    assert "Adding filters.png" in proc.stderr and "Adding training.png" in proc.stderr
    assert "speedup.png" not in proc.stderr
    assert (folder / "results" / "report.html").stat().st_size > 100_000
    assert "System Message" not in (folder / "results" / "report.html").read_text()  # docutils' errors


def test_a_report_of_one_figure_links_only_to_what_it_holds(reported):
    """`snakemake results/filters.png --report`: no link to the training curve it does not hold."""
    folder, _ = reported
    report = folder / "results" / "filters_only.html"
    proc = snakemake(folder, "results/filters.png", "--configfile", "small.yaml", "--report", report)
    assert "Adding filters.png" in proc.stderr and "Adding training.png" not in proc.stderr
    assert "ERROR" not in proc.stderr and "System Message" not in report.read_text()
    cost = labels.filters(folder / "results" / "model.h5")["cost"]
    assert f"This run's model: final cost {cost}" in report.read_text()  # from the filters' labels


class VisibleText(html.parser.HTMLParser):
    """The text a reader sees: everything outside <script> and <style>."""

    def __init__(self):
        super().__init__()
        self.hidden, self.parts, self.images = 0, [], []

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style"):
            self.hidden += 1
        if tag == "img":
            self.images.append(dict(attrs).get("src", ""))

    def handle_endtag(self, tag):
        if tag in ("script", "style"):
            self.hidden -= 1

    def handle_data(self, data):
        if not self.hidden:
            self.parts.append(data)

    @property
    def text(self):
        return re.sub(r"\s+", " ", " ".join(self.parts))


@pytest.fixture(scope="module")
def chromium():
    """Debian's Chromium, or skip (outside CI) / fail (in CI) with the reason."""
    path = shutil.which("chromium")
    reason = None
    if path is None:
        reason = "Chromium is not installed (apt-get install chromium)"
    elif os.geteuid() != 0:
        reason = "the browser test runs Chromium as root with --no-sandbox"
    if reason:
        unavailable(reason, "the browser test")
    return path


# Clicks what a reader clicks: the figure's link on the start page (its description opens in the
# side panel), then the eye button beside its labels (the figure opens in the main panel).
OPEN_RESULT = """<script>
window.addEventListener("load", function () {
  const target = TARGET;
  const until = function (find, then) {
    const found = find();
    if (found) { then(found); } else { setTimeout(function () { until(find, then); }, 100); }
  };
  until(function () {
    return Array.from(document.querySelectorAll("a")).find((a) => a.textContent.trim() === target);
  }, function (link) {
    link.click();
    until(function () {
      return document.querySelector("table tbody tr td:last-child a");
    }, function (eye) { eye.click(); });
  });
});
</script>"""


def render(browser, page, shot, tmp_path):
    """Open ``page`` in headless Chromium: (visible text, img sources) of the DOM; writes ``shot``."""
    cmd = [
        browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium'}", "--window-size=1400,1000",
        "--virtual-time-budget=15000",  # the report is a JavaScript app: let it render first
        f"--screenshot={shot}", "--dump-dom", page.as_uri(),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    parser = VisibleText()
    parser.feed(proc.stdout)
    return parser.text, parser.images


def assert_not_blank(shot):
    png = matplotlib.image.imread(shot)[..., :3]
    assert png.shape[:2] == (1000, 1400)
    colors = np.unique((png * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert png.std() > 0.1 and len(colors) > 50  # text, a figure: not one flat color


def test_report_renders_in_chromium_with_figures_and_captions(chromium, reported, tmp_path):
    browser = chromium
    folder, _ = reported
    report = (folder / "results" / "report.html").read_text()
    _, attrs = h5io.read_model(folder / "results" / "model.h5")

    text, _ = render(browser, folder / "results" / "report.html", tmp_path / "start.png", tmp_path)
    assert_not_blank(tmp_path / "start.png")
    assert "Parallel sparse autoencoder (Snakemake + MPI)" in text
    assert "Features : filters.png" in text and "Training : training.png" in text
    assert "count = 2000" in text and "iterations = 30" in text  # the config used
    assert f"final cost {attrs['cost']:.6f} after 30 iterations" in text

    head, tail = report.rsplit("</body>", 1)
    captions = {
        "filters.png": [
            "The 25 features learned from 2,000 whitened 8×8 patches",  # noqa: RUF001
            "scaled by its own max",
        ],
        "training.png": [
            "Training curve: the cost J (top) and the norm of its gradient",
            f"final cost {attrs['cost']:.6f} after 30 iterations (config limit 30)"
            f" and {attrs['evaluations']} evaluations of the cost, on 2 MPI ranks",
            "The run was not interrupted.",
        ],
    }
    for target, expected in captions.items():
        page = tmp_path / f"open_{target}.html"
        page.write_text(head + OPEN_RESULT.replace("TARGET", json.dumps(target)) + "</body>" + tail)
        shot = tmp_path / f"{target}.screenshot.png"
        text, images = render(browser, page, shot, tmp_path)
        assert_not_blank(shot)
        assert "Description" in text and f"results/{target}" in text
        for sentence in expected:
            assert sentence in text, (sentence, text[:3000])
        shown = [src for src in images if src.startswith("data:image/png;")]
        assert len(shown) == 1 and f"filename={target};base64," in shown[0][:100]  # the figure is open
        shutil.copy(shot, folder / "results" / shot.name)  # to look at
