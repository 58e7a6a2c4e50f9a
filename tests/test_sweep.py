"""The scaling sweep: its functions, the collectives benchmark on real ranks, a tiny real sweep."""

import csv
import itertools
import json
import re
import sys

import matplotlib.image
import numpy as np
import pytest

from conftest import (
    REPO,
    SCRIPTS,
    job_counts,
    load_config,
    make_patches_file,
    mpirun,
    run,
    smooth_images,
    snakemake,
    write_config,
)
from sae import SaeError, labels, objective
from sae.slices import Slices, row_length
from sae.sweep import collectives, model, records, scaling

TINY = load_config("tiny_sweep")["sweep"]
# Timing rules, each with its one-rank variant (a plain process, not an MPI job).
TIMING_RULES = {"sweep_train", "sweep_train_one_rank", "sweep_collectives", "sweep_collectives_one_rank"}
TIMING_RULES |= {"sweep_optimizer"}  # one process on one core


def sweep_config(folder, name, sweep_section, images=True):
    """A config file with a ``sweep`` section and, for speed, two small synthetic images."""
    layers = [{"sweep": sweep_section}]
    if images:
        for i, img in enumerate(smooth_images(2, 64)):
            np.save(folder / f"img{i}.npy", img)
        layers.append({"images": {"source": ["img0.npy", "img1.npy"], "whiten": True}})
    return write_config(folder / name, *layers)


def run_row(ranks, samples, repeat=1, loop=1.0, evaluations=100, hidden=25, **extra):
    """A runtimes.csv row with plausible timings."""
    row = {
        "ranks": ranks,
        "hidden": hidden,
        "samples": samples,
        "repeat": repeat,
        "evaluations": evaluations,
        "iterations": 90,
        "block_size": 128,
        "side": 8,
        "precision": "float32",
        "cost": 0.5,
        "wall_seconds": loop + 0.1,
        "load_seconds_max": 0.01,
        "load_seconds_mean": 0.01,
        "loop_seconds_max": loop,
        "loop_seconds_mean": loop,
        "compute_seconds_max": 0.7 * loop,
        "compute_seconds_mean": 0.6 * loop,
        "comm_seconds_max": 0.2 * loop,
        "comm_seconds_mean": 0.15 * loop,
        "optimizer_seconds_max": 0.1 * loop,
        "optimizer_seconds_mean": 0.1 * loop,
    }
    row.update(extra)
    return row


# --- Plain functions ---------------------------------------------------------------------------


def test_run_names_round_trip_and_bad_names_are_one_line_errors():
    name = records.RUN_NAME.format(ranks=16, hidden=100, samples=160000, repeat=3)
    assert records.parse_run_name(f"results/sweep/runs/{name}") == (16, 100, 160000, 3)
    with pytest.raises(SaeError, match="not a sweep run file"):
        records.parse_run_name("model.h5")


def test_run_record_names_a_missing_attribute():
    attrs = {k: 1 for k in records.RUN_COLUMNS if k not in ("repeat", "comm_seconds_max")}
    with pytest.raises(SaeError, match="'comm_seconds_max' missing"):
        records.run_record(attrs, 1, "m.h5")


def test_csv_round_trip_keeps_every_bit(tmp_path):
    rows = [run_row(1, 1000, loop=1 / 3), run_row(2, 1000, loop=np.float64(2 / 7), evaluations=np.int64(5))]
    records.write_csv(tmp_path / "r.csv", rows, records.RUN_COLUMNS)
    back = records.read_csv(tmp_path / "r.csv", records.RUN_COLUMNS)
    assert back == [{k: (v.item() if isinstance(v, np.generic) else v) for k, v in r.items()} for r in rows]
    assert not list(tmp_path.glob(".*tmp*"))
    (tmp_path / "bad.csv").write_text("ranks,samples\n1,x\n")
    with pytest.raises(SaeError, match="missing columns"):
        records.read_csv(tmp_path / "bad.csv", records.RUN_COLUMNS)


def test_speedup_is_the_median_ratio_and_efficiency_is_speedup_over_p():
    rows = [run_row(1, 1000, r, loop) for r, loop in enumerate([4.0, 4.4, 3.9], 1)]
    rows += [run_row(4, 1000, r, loop) for r, loop in enumerate([1.3, 1.25, 1.2], 1)]
    rows += [run_row(1, 2000, 1, 8.0), run_row(4, 2000, 1, 2.0)]
    rows += [run_row(1, 1000, 1, 40.0, hidden=100), run_row(4, 1000, 1, 20.0, hidden=100)]
    points = {(p["ranks"], p["samples"]): p for p in scaling.scaling(rows) if p["hidden"] == 25}
    (big,) = [p for p in scaling.scaling(rows) if (p["hidden"], p["ranks"]) == (100, 4)]
    assert big["speedup"] == 2.0  # against the one-rank run of the same model size
    assert points[4, 1000]["speedup"] == pytest.approx(4.0 / 1.25)
    assert points[4, 1000]["loop_seconds_min"] == 1.2 and points[4, 1000]["loop_seconds_max"] == 1.3
    assert points[4, 2000]["efficiency"] == pytest.approx(1.0)
    for p in points.values():
        assert p["efficiency"] == pytest.approx(p["speedup"] / p["ranks"])
    assert points[1, 1000]["speedup"] == 1.0 and points[1, 1000]["runs"] == 3
    with pytest.raises(SaeError, match="speedup needs ranks 1"):
        scaling.scaling([run_row(2, 1000)])


def test_markdown_table_is_the_reports_layout():
    rows = [
        run_row(p, n, r, loop=n / 1000 / p + r / 100)
        for p in (1, 2)
        for n in (1000, 20000)
        for r in (1, 2, 3)
    ]
    rows.remove(next(r for r in rows if (r["ranks"], r["samples"]) == (2, 20000)))
    text = scaling.markdown_table(rows)
    lines = text.splitlines()
    assert lines[0] == "| Processes / Training size | 1,000 | 20,000 |"
    assert lines[2] == "| 1 | 1.02 s | 20.02 s |"  # the median of three repeats
    assert lines[3].startswith("| 2 | 0.52 s | ")
    assert "the same on every process count" in text and "1,000: 100" in text
    rows[0]["evaluations"] = 101
    assert "DIFFER" in scaling.markdown_table(rows)
    assert scaling.evaluations_by_problem(rows)[25, 1000] == [100, 101]
    rows += [run_row(p, 1000, hidden=100, loop=10.0 / p) for p in (1, 2)]
    text = scaling.markdown_table(rows)  # one table per model size
    assert text.startswith("**25 hidden units**\n\n| Processes / Training size | 1,000 | 20,000 |")
    table = "| Processes / Training size | 1,000 | 20,000 |\n|---:|---:|---:|\n| 1 | 10.00 s | — |"
    assert f"**100 hidden units**\n\n{table}" in text
    assert "100 hidden, 1,000: 100" in text


def test_breakdown_parts_add_up_to_the_loop():
    parts = scaling.breakdown([run_row(1, 1000, loop=2.0), run_row(2, 1000, loop=1.0)])
    for p in parts:
        total = sum(p[k] for k in scaling.BREAKDOWN_PARTS)
        assert total == pytest.approx(p["loop"])
        assert sum(p[f"{k}_share"] for k in scaling.BREAKDOWN_PARTS) == pytest.approx(1.0)
    assert parts[0]["imbalance"] == pytest.approx(0.1 * 2.0)


def test_tree_steps_and_whole_blocks():
    assert list(model.tree_steps([1, 2, 3, 4, 5, 16, 17])) == [0, 1, 2, 2, 3, 4, 5]
    # MPICH: recursive doubling below 512 KiB, a ring of p - 1 steps beyond
    assert list(model.steps([2, 16, 16], [1000, 500_000, 600_000])) == [1, 4, 15]
    # 1000 rows = 8 blocks of 128 (the last 104 rows): 2 ranks hold 4 blocks, 16 ranks 1 block.
    assert list(model.busiest_rows(1000, [1, 2, 3, 16], 128)) == [1000, 512, 384, 128]


def synthetic(
    truth, ranks=(1, 2, 4, 8), sizes=(10_000, 40_000, 160_000), hidden=(25, 100), scales=(0.25, 1, 4)
):
    """Runs and the two benchmarks generated exactly by the model with parameters ``truth``."""
    runs = []
    for h in hidden:
        for p in ranks:
            terms = model.per_evaluation(truth, h, p)
            for n in sizes:
                e = 400 + n // 10_000 + h
                rows = float(model.busiest_rows(n, p, 128))
                compute = e * (terms["compute_per_patch"] * rows + terms["compute_fixed"])
                optimizer = e * terms["optimizer"]
                sharing = truth["sharing"] * (p > 1) * (compute + optimizer)
                runs.append(
                    run_row(
                        p,
                        n,
                        hidden=h,
                        evaluations=e,
                        loop=compute + e * terms["communication"] + optimizer + sharing,
                        compute_seconds_max=compute,
                        compute_seconds_mean=compute,
                        optimizer_seconds_max=optimizer,
                        load_seconds_max=truth["load_fixed"] + truth["load_per_patch"] * rows,
                    )
                )
    bench = []
    for p in ranks:
        for s in scales:
            point, totals, rows = collectives.buffers(64, 25, p, s)
            nbytes = [8.0 * point, 8.0 * totals, 8.0 * rows]
            seconds = sum(
                model.steps(p, b) * truth["alpha"] + (p - 1) / p * b * truth["beta"] for b in nbytes
            )
            bench.append({"ranks": p, "scale": s, "point_doubles": point, "sums_doubles": totals,
                          "rows_doubles": rows, "seconds": float(seconds) + 1e-7 * (p == 1)})  # fmt: skip
    optimizer = [
        {"hidden": h, "slices": k, "values": k * 8, "seconds": truth["optimizer_fixed"]
         + truth["optimizer_per_value"] * k * 8}
        for h in hidden for k in (1, 2, 4, 8)
    ]  # fmt: skip
    return runs, bench, optimizer


TRUTH = {
    "block_size": 128,
    "side": 8,
    "compute_per_patch_param": 1e-10,
    "compute_per_patch": 3e-8,
    "compute_fixed_param": 2e-8,
    "compute_fixed": 2e-5,
    "optimizer_fixed": 4e-5,
    "optimizer_per_value": 5e-9,
    "load_per_patch": 1e-6,
    "load_fixed": 2e-3,
    "alpha": 3e-6,
    "beta": 2e-10,
    "sharing": 0.1,
}


def test_model_terms_are_the_buffers_and_the_busiest_ranks_slices():
    assert model.parameters(8, [25, 100]).tolist() == [
        objective.n_params(64, 25),
        objective.n_params(64, 100),
    ]
    slices, sums = Slices(objective.n_params(64, 25)), objective.Sums(64, 25)
    point, totals, rows = model.buffer_bytes(8, 25, 4)
    assert float(point) == 8.0 * slices.padded
    assert (
        float(totals)
        == 8.0 * (3 * 64 * 25 + 2 * 25 + 64 + 4 * (25 + 64))
        == 8.0 * (sums.position(slices.size) + 4 * sums.global_index().size)
    )
    assert float(rows) == 8.0 * (slices.count + 4) * row_length()
    assert (point, totals, rows) == tuple(8.0 * b for b in collectives.buffers(64, 25, 4))
    # 59 slices of 56: the busiest of 16 ranks owns 4
    assert (slices.count, slices.length) == (59, 56)
    assert float(model.optimizer_values(8, 25, 16)) == 4 * 56
    terms = model.per_evaluation(TRUTH, 25, 16)
    assert terms["optimizer"] == pytest.approx(4e-5 + 5e-9 * 4 * 56)


def test_fit_recovers_the_parameters_that_made_the_data():
    runs, bench, optimizer = synthetic(TRUTH)
    fit = model.fit_model(runs, bench, optimizer)
    for key, value in TRUTH.items():
        assert fit[key] == pytest.approx(value, rel=1e-6), key
    assert fit["benchmark_ranks"] == [1, 2, 4, 8] and fit["hidden"] == [25, 100]
    assert fit["evaluations"] == {"25": 429.0, "100": 504.0}  # medians over the sizes
    for check in model.validation(fit, runs):
        assert abs(check["relative_error"]) < 1e-6
    # the fastest of a point's repeats is the one fitted and checked
    slower = {**runs[0], "repeat": 2, "loop_seconds_max": 2 * runs[0]["loop_seconds_max"]}
    assert (
        model.fastest([slower, *runs])[0] == runs[0]
        and model.fit_model([slower, *runs], bench, optimizer) == fit
    )
    with pytest.raises(SaeError, match="different side"):
        model.fit_model([*runs, run_row(1, 1000, side=10)], bench, optimizer)


def test_model_predictions_behave():
    fit = {**TRUTH, "evaluations": {"25": 400.0, "100": 450.0}}
    s, e = model.predicted_speedup(fit, np.array([1.0, 2.0, 1024.0]), 1e4, 25)
    assert s[0] == pytest.approx(1.0) and np.all(s <= [1, 2, 1024])
    assert e[2] < 0.01  # 79 blocks cannot keep 1024 ranks busy
    _, e_big = model.predicted_speedup(fit, 1024.0, 1e9, 25)
    assert e_big > 0.9  # plenty of rows: compute dominates
    parts = model.predict(fit, 8, 1e6, 100)
    assert parts["total"] == pytest.approx(
        sum(parts[k] for k in ("load", "compute", "communication", "optimizer"))
    )
    assert parts["optimizer"] > model.predict(fit, 8, 1e6, 25)["optimizer"]  # grows with the model
    assert parts["optimizer"] < model.predict(fit, 1, 1e6, 100)["optimizer"]  # shrinks with the ranks
    shared = model.predict(fit, 8, 1e6, 100, shared=True)
    assert shared["sharing"] == pytest.approx(0.1 * (parts["compute"] + parts["optimizer"]))
    assert (
        model.predicted_speedup(fit, 8, 1e6, 100, shared=True)[0]
        < model.predicted_speedup(fit, 8, 1e6, 100)[0]
    )
    assert model.model_sizes([10000, 20000, 40000], 1e8) == [10000, 20000, 40000, 10**5, 10**6, 10**7, 10**8]


def test_without_a_multi_rank_benchmark_communication_is_free():
    row = {"ranks": 1, "scale": 1.0, "point_doubles": 10, "sums_doubles": 10, "rows_doubles": 10}
    assert model.fit_collectives([{**row, "seconds": 1e-6}]) == (0.0, 0.0)


# --- The benchmarks on real MPI ranks and one core ------------------------------------------------


def test_collectives_benchmark_times_the_models_buffers_on_two_ranks(tmp_path):
    patches = make_patches_file(tmp_path / "p.h5", 300)
    out = tmp_path / "c.csv"
    args = ["--side", 8, "--hidden", 25, "--scales", 0.5, 1, "--repeats", 20]
    mpirun(2, SCRIPTS / "sweep_collectives.py", patches, out, *args)
    rows = records.read_csv(out, records.COLLECTIVE_COLUMNS)
    assert [r["scale"] for r in rows] == [0.5, 1.0]
    one = rows[1]
    slices, sums = Slices(objective.n_params(64, 25)), objective.Sums(64, 25)
    assert one["point_doubles"] == slices.padded
    assert one["sums_doubles"] == sums.position(slices.size) + 2 * (25 + 64)
    assert one["rows_doubles"] == (slices.count + 2) * row_length()
    assert all(r["ranks"] == 2 and 0 < r["seconds_min"] <= r["seconds"] < 1 for r in rows)
    bad = mpirun(
        2,
        SCRIPTS / "sweep_collectives.py",
        patches,
        out,
        *args[:4],
        "--scales",
        2,
        "--repeats",
        5,
        check=False,
    )
    assert bad.returncode != 0 and "error: --scales must include 1" in bad.stderr


def test_optimizer_benchmark_times_one_ranks_step_against_its_slices(tmp_path):
    out = tmp_path / "o.csv"
    run([sys.executable, SCRIPTS / "sweep_optimizer.py", "--side", 8, "--hidden", 25, 100,
         "--evaluations", 40, "--", out])  # fmt: skip
    rows = records.read_csv(out, records.OPTIMIZER_COLUMNS)
    for h, count, length in ((25, 59, 56), (100, 63, 208)):
        mine = [r for r in rows if r["hidden"] == h]
        assert [r["slices"] for r in mine] == [1, 2, 4, 8, 16, 32, count]
        assert all(r["values"] == r["slices"] * length for r in mine)
        assert all(0 < r["seconds_min"] <= r["seconds"] < 0.1 for r in mine)
    fixed, per_value = model.fit_optimizer(rows)
    assert fixed > 0 and per_value > 0  # a rank with more values takes longer


# --- A tiny real sweep with Snakemake ------------------------------------------------------------


def job_events(stderr):
    """(event, jobid, rule, threads) in Snakemake's order: event is "start" or "end"."""
    events = []
    for block in re.split(r"\n(?=\[\w{3} \w{3} )", stderr):
        start = re.search(r"^(?:local)?rule (\w+):\n((?:    .*\n?)*)", block, re.M)
        if start:
            body = start.group(2)
            jobid = int(re.search(r"jobid: (\d+)", body).group(1))
            threads = re.search(r"threads: (\d+)", body)
            events.append(("start", jobid, start.group(1), int(threads.group(1)) if threads else 1))
        message = re.search(r"^Job (\d+): (\w+): .*\((\d+) cores\)$", block, re.M)  # a timing run
        if message:
            events.append(("start", int(message.group(1)), message.group(2), int(message.group(3))))
        for jobid, rule in re.findall(r"Finished jobid: (\d+) \(Rule: (\w+)\)", block):
            events.append(("end", int(jobid), rule, None))
    return events


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
    """The sweep of TINY run in a temporary folder with the checkout's Snakefile (and so its
    workflow profile, which serializes the timing runs)."""
    folder = tmp_path_factory.mktemp("sweep")
    config = sweep_config(folder, "tiny.yaml", TINY)
    proc = snakemake(folder, "-s", REPO / "Snakefile", "sweep", "--cores", "2", "--configfile", config)
    return folder, proc


def test_tiny_sweep_writes_every_output(tiny_sweep):
    folder, _ = tiny_sweep
    out = folder / "results" / "sweep"
    for name in ("runtimes.csv", "runtimes.md", "scaling.csv", "model.json", "optimizer.csv"):
        assert (out / name).stat().st_size > 0, name
    for name in ("speedup.png", "efficiency.png", "breakdown.png", "model.png"):
        png = matplotlib.image.imread(out / name)
        assert png.shape[0] > 300 and png.shape[1] > 500 and png[..., :3].std() > 0.05, name
    assert sorted(p.name for p in (out / "collectives").iterdir()) == ["p1.csv", "p2.csv"]
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]


def test_tiny_sweep_csv_has_one_row_per_point(tiny_sweep):
    folder, _ = tiny_sweep
    rows = records.read_csv(folder / "results" / "sweep" / "runtimes.csv", records.RUN_COLUMNS)
    points = [(r["ranks"], r["hidden"], r["samples"], r["repeat"]) for r in rows]
    assert sorted(points) == [
        (p, h, n, 1) for p in TINY["ranks"] for h in TINY["hidden"] for n in TINY["sizes"]
    ]
    with open(folder / "results" / "sweep" / "runtimes.csv") as f:
        header = next(csv.reader(f))
    assert header[:5] == ["ranks", "hidden", "samples", "repeat", "evaluations"]
    for r in rows:
        assert r["iterations"] == TINY["iterations"] and r["evaluations"] >= r["iterations"]
        for key in ("loop", "compute", "comm", "load"):
            assert 0 <= r[f"{key}_seconds_mean"] <= r[f"{key}_seconds_max"] * (1 + 1e-12), key
        assert r["compute_seconds_max"] + r["optimizer_seconds_max"] <= r["loop_seconds_max"] * 1.01


def test_tiny_sweep_evaluations_and_cost_are_equal_across_ranks(tiny_sweep):
    folder, _ = tiny_sweep
    rows = records.read_csv(folder / "results" / "sweep" / "runtimes.csv", records.RUN_COLUMNS)
    for h in TINY["hidden"]:
        for n in TINY["sizes"]:
            same = [r for r in rows if (r["hidden"], r["samples"]) == (h, n)]
            assert len(same) == len(TINY["ranks"])
            assert len({r["evaluations"] for r in same}) == 1
            assert len({r["cost"] for r in same}) == 1  # bit for bit: the model is rank-invariant
    assert len({r["cost"] for r in rows}) == len(TINY["hidden"]) * len(TINY["sizes"])
    table = (folder / "results" / "sweep" / "runtimes.md").read_text()
    for h in TINY["hidden"]:
        assert f"**{h} hidden units**\n\n| Processes / Training size | 1,000 | 2,000 |" in table
    assert "the same on every process count" in table
    assert re.search(r"^\| 2 \| \d+\.\d\d s \| \d+\.\d\d s \|$", table, re.M)


def test_tiny_sweep_efficiency_is_speedup_over_p(tiny_sweep):
    folder, _ = tiny_sweep
    out = folder / "results" / "sweep"
    runs = records.read_csv(out / "runtimes.csv", records.RUN_COLUMNS)
    loop = {(r["hidden"], r["samples"], r["ranks"]): r["loop_seconds_max"] for r in runs}
    points = records.read_csv(out / "scaling.csv", scaling.SCALING_COLUMNS)
    assert len(points) == len(TINY["ranks"]) * len(TINY["hidden"]) * len(TINY["sizes"])
    for p in points:
        h, n = p["hidden"], p["samples"]
        assert p["speedup"] == pytest.approx(loop[h, n, 1] / loop[h, n, p["ranks"]], rel=1e-12)
        assert p["efficiency"] == pytest.approx(p["speedup"] / p["ranks"], rel=1e-12)


def test_tiny_sweep_model_is_fitted(tiny_sweep):
    folder, _ = tiny_sweep
    fit = json.loads((folder / "results" / "sweep" / "model.json").read_text())
    fitted = fit["model"]
    assert fitted["alpha"] + fitted["beta"] > 0 and fitted["hidden"] == TINY["hidden"]
    assert fitted["benchmark_ranks"] == [1, 2] and fitted["block_size"] == 128
    small, big = (model.per_evaluation(fitted, h) for h in TINY["hidden"])
    assert 0 < small["compute_per_patch"] <= big["compute_per_patch"]
    assert small["buffer_bytes"] < big["buffer_bytes"]
    assert len(fit["validation"]) == len(TINY["ranks"]) * len(TINY["hidden"]) * len(TINY["sizes"])
    # the report's largest point and the rule's max-ranks x max-samples, for each model size
    assert [(p["hidden"], p["ranks"], p["samples"]) for p in fit["predictions"]] == [
        (h, p, n) for h in TINY["hidden"] for p, n in ((16, 10000), (16, 160000), (1024, 10**8))
    ]


def test_timing_jobs_run_one_at_a_time_on_as_many_cores_as_ranks(tiny_sweep):
    """The sweep_timing resource (limit 1) serializes them, though 2 cores would fit two 1-rank jobs."""
    _, proc = tiny_sweep
    events = job_events(proc.stderr)
    rules = {jobid: rule for kind, jobid, rule, _ in events if kind == "start"}
    assert sorted(r for r in rules.values() if r in TIMING_RULES) == sorted(
        ["sweep_collectives", "sweep_collectives_one_rank", "sweep_optimizer"]
        + ["sweep_train", "sweep_train_one_rank"] * 4
    )
    running, most = set(), 0
    for kind, jobid, rule, _ in events:
        if rule not in TIMING_RULES:
            continue
        if kind == "start":
            running.add(jobid)
            most = max(most, len(running))
        else:
            running.discard(jobid)
    assert most == 1
    starts = [e for e in events if e[0] == "start" and e[2] in TIMING_RULES]
    assert {t for *_, t in starts} == {1, 2}
    assert all(f"tasks={t}" in proc.stderr for t in (1, 2))


def test_paper_grid_plans_the_reports_150_runs(workflow_copy):
    """The report's 75 runs (ranks x sizes x repeats) for each of its two model sizes."""
    out = snakemake(
        workflow_copy, "sweep", "-n", "--configfile", workflow_copy / "config" / "paper.yaml"
    ).stdout
    counts = job_counts(out)
    assert counts["sweep_train"] + counts["sweep_train_one_rank"] == 5 * 5 * 3 * 2
    assert counts["sweep_train_one_rank"] == 5 * 3 * 2 and counts["sweep_collectives"] == 4


def test_sweep_without_one_rank_is_a_one_line_config_error(workflow_copy):
    config = sweep_config(workflow_copy, "bad.yaml", {"ranks": [2, 4]}, images=False)
    proc = snakemake(workflow_copy, "sweep", "-n", "--configfile", config, check=False)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode != 0 and len(errors) == 1 and "sweep.ranks" in errors[0]


def test_tiny_sweep_says_which_grid_point_runs_of_how_many_in_order(tiny_sweep):
    _, proc = tiny_sweep
    said = re.findall(
        r"^Job \d+: sweep_train\w*: grid point (\d+) of (\d+),"
        r" (\d+) ranks x (\d+) hidden x (\d+) patches, repeat (\d+)",
        proc.stderr,
        re.M,
    )
    grid = list(
        itertools.product(TINY["ranks"], TINY["hidden"], TINY["sizes"], range(1, TINY["repeats"] + 1))
    )
    assert [tuple(int(v) for v in line) for line in said] == [
        (k, len(grid), *point) for k, point in enumerate(grid, start=1)
    ]


def test_report_after_the_sweep_holds_its_figures_and_tables_with_their_numbers(tiny_sweep):
    folder, _ = tiny_sweep
    proc = snakemake(
        folder, "-s", REPO / "Snakefile", "--configfile", "tiny.yaml", "--report", "results/report.html"
    )
    added = re.findall(r"^Adding (\S+) \(", proc.stderr, re.M)
    tables = ["runtimes.csv", "runtimes.md", "scaling.csv", "model.json", "p1.csv", "p2.csv", "optimizer.csv"]
    figures = ["speedup.png", "efficiency.png", "breakdown.png", "model.png"]
    # The main job did not run here: no filters or training curve, and no error for them.
    assert sorted(added) == sorted(tables + figures)
    page = (folder / "results" / "report.html").read_text()
    out = folder / "results" / "sweep"
    for text in (
        labels.speedup(out / "scaling.csv")["measured"],
        labels.efficiency(out / "scaling.csv")["measured"],
        labels.breakdown(out / "runtimes.csv")["measured"],
        labels.model(out / "model.json")["measured"],
    ):
        assert json.dumps(text)[1:-1] in page, text  # in a caption, as the report's JSON holds it


def test_a_run_of_the_default_target_after_the_sweep_plans_no_sweep_job(tiny_sweep):
    """Only a report asks for the sweep's outputs: a run builds the filters and the curve."""
    folder, _ = tiny_sweep
    out = snakemake(folder, "-s", REPO / "Snakefile", "-n", "--forceall", "--configfile", "tiny.yaml").stdout
    assert set(job_counts(out)) == {"images", "patches", "train", "filters", "training_curve", "all"}
