"""Records of the sweep: timed runs (model files) as rows, and the CSV and JSON files.

One timed training run is a model.h5 written by train_model.py, named by RUN_NAME
(ranks, hidden units, samples, repeat); its attributes (the timing names come from h5io) become one
row of runtimes.csv with RUN_COLUMNS. Rows are plain dicts; CSV files keep every float
bit for bit (repr) and are written through h5io.atomic_path.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np

from .. import SaeError, h5io

# Columns of runtimes.csv: one row per ranks x hidden x samples x repeat; integers first.
RUN_INTEGERS = ("ranks", "hidden", "samples", "repeat", "evaluations", "iterations", "block_size", "side")
RUN_COLUMNS = (
    *RUN_INTEGERS,
    "precision",
    "cost",
    h5io.WALL_SECONDS,
    *h5io.RANK_TIMING_ATTRS,
)
# Columns of a collectives benchmark file: one row per buffer scale (sae.sweep.collectives).
COLLECTIVE_COLUMNS = (
    "ranks",
    "scale",
    "point_doubles",
    "sums_doubles",
    "rows_doubles",
    "seconds",
    "seconds_min",
)
# Columns of the optimizer benchmark file: one row per hidden size and slices owned (sae.sweep.optimizer).
OPTIMIZER_COLUMNS = ("hidden", "slices", "values", "seconds", "seconds_min")
# The columns of every CSV file here that hold integers ("runs": scaling.csv), and text.
INTEGER_COLUMNS = {*RUN_INTEGERS, "runs", "point_doubles", "sums_doubles", "rows_doubles", "slices", "values"}
TEXT_COLUMNS = {"precision"}
OPTIONAL_ATTRS = {"precision": ""}

RUN_NAME = "p{ranks}_h{hidden}_n{samples}_r{repeat}.h5"  # as rule sweep_train's output
_RUN_NAME = re.compile(r"p(\d+)_h(\d+)_n(\d+)_r(\d+)\.h5")


def parse_run_name(path) -> tuple[int, int, int, int]:
    """(ranks, hidden, samples, repeat) from a run file named like RUN_NAME."""
    match = _RUN_NAME.fullmatch(Path(path).name)
    if not match:
        raise SaeError(f"{path}: not a sweep run file (expected a name like p2_h25_n10000_r1.h5)")
    return tuple(int(g) for g in match.groups())


def _typed(name: str, value):
    """A column's value as its type: int, str (HDF5 may give bytes) or float."""
    if name in INTEGER_COLUMNS:
        return int(value)
    if name in TEXT_COLUMNS:
        return value.decode() if isinstance(value, bytes) else str(value)
    return float(value)


def run_record(attrs: dict, repeat: int, where="model") -> dict:
    """One runtimes.csv row from a model file's attributes."""
    row = {"repeat": int(repeat)}
    for name in RUN_COLUMNS:
        if name == "repeat":
            continue
        if name not in attrs:
            if name in OPTIONAL_ATTRS:
                row[name] = OPTIONAL_ATTRS[name]
                continue
            raise SaeError(f"{where}: attribute {name!r} missing (not written by train_model.py?)")
        row[name] = _typed(name, attrs[name])
    return row


def read_run(path) -> dict:
    """The runtimes.csv row of one timed run, checked against the file's name."""
    ranks, hidden, samples, repeat = parse_run_name(path)
    _, attrs = h5io.read_model(path)
    row = run_record(attrs, repeat, path)
    if (row["ranks"], row["hidden"], row["samples"]) != (ranks, hidden, samples):
        raise SaeError(
            f"{path}: trained on {row['ranks']} ranks, {row['hidden']} hidden units and "
            f"{row['samples']} samples, the name says {ranks}, {hidden} and {samples}"
        )
    return row


def sort_runs(rows: list[dict]) -> list[dict]:
    return sorted(rows, key=lambda r: (r["hidden"], r["samples"], r["ranks"], r["repeat"]))


def _text(value) -> str:
    """A CSV cell: floats in full precision (repr), numpy scalars as plain numbers."""
    if isinstance(value, float | np.floating):
        return repr(float(value))
    if isinstance(value, np.integer):
        return str(int(value))
    return str(value)


def write_csv(path, rows: list[dict], columns) -> None:
    """A CSV file with a header line; floats written with full precision (repr)."""
    with h5io.atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_text(row[c]) for c in columns])


def read_csv(path, columns) -> list[dict]:
    """Rows of a CSV file written by write_csv; ``columns`` must all be there."""
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            missing = [c for c in columns if c not in (reader.fieldnames or [])]
            if missing:
                raise SaeError(f"{path}: missing columns {', '.join(missing)}")
            rows = [{name: _typed(name, line[name]) for name in reader.fieldnames} for line in reader]
    except FileNotFoundError:
        raise SaeError(f"{path}: no such file") from None
    except ValueError as err:
        raise SaeError(f"{path}: not a number in the table ({err})") from None
    if not rows:
        raise SaeError(f"{path}: no rows")
    return rows


def write_json(path, data: dict) -> None:
    with h5io.atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(data, indent=2) + "\n")
