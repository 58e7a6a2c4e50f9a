"""Training on real MPI processes: the same model on any rank count, its file, bad input."""

import re

import h5py
import numpy as np
import pytest

from conftest import make_patches_file, mpirun, train_args
from sae import h5io


@pytest.fixture(scope="module")
def models(tmp_path_factory, patches_1001):
    """The same training on 1, 2, 3 and 5 ranks (1001 patches: N divides by none; 5 ranks on 2
    cores, and the optimizer's 59 slices split 11/12/12/12/12)."""
    folder = tmp_path_factory.mktemp("models")
    out = {}
    for ranks in (1, 2, 3, 5):
        out[ranks] = folder / f"model{ranks}.h5"
        proc = mpirun(ranks, *train_args(patches_1001, out[ranks], iterations=25))
        out[ranks, "log"] = proc.stderr
    return out


def read(path):
    with h5py.File(path) as f:
        return {k: f[k][()] for k in f}, dict(f.attrs)


@pytest.mark.parametrize("ranks", [2, 3, 5])
def test_model_is_bitwise_identical_on_any_rank_count(models, ranks):
    one, attrs1 = read(models[1])
    many, attrs = read(models[ranks])
    for name in ("W1", "W2", "b1", "b2"):
        assert np.array_equal(one[name], many[name]), name
    assert np.array_equal(one["history"][:, :2], many["history"][:, :2])
    assert attrs["cost"] == attrs1["cost"] and attrs["evaluations"] == attrs1["evaluations"]
    assert attrs["ranks"] == ranks and attrs1["ranks"] == 1


def test_model_file_layout_and_progress_log(models):
    data, attrs = read(models[2])
    assert data["W1"].shape == (25, 64) and data["W2"].shape == (64, 25)
    assert data["b1"].shape == (25,) and data["b2"].shape == (64,)
    history = data["history"]
    assert history.shape == (attrs["iterations"], 3) and attrs["iterations"] == 25
    assert history[-1, 0] == pytest.approx(attrs["cost"])
    assert history[-1, 0] < history[0, 0]  # training lowers the cost
    assert np.all(np.diff(history[:, 2]) >= 0)  # elapsed seconds
    assert attrs["evaluations"] >= attrs["iterations"] and attrs["train_seconds"] > 0
    for key, value in {"hidden": 25, "rho": 0.01, "lambda": 1e-4, "beta": 3.0, "seed": 0}.items():
        assert attrs[key] == value
    assert attrs["max_iterations"] == 25 and attrs["block_size"] == 128 and attrs["samples"] == 1001
    # the timing attributes named once in h5io, each a plausible number of seconds
    assert all(attrs[key] >= 0 for key in h5io.TIMING_ATTRS)
    assert attrs["loop_seconds_max"] >= attrs["loop_seconds_mean"] > 0
    log = models[2, "log"]
    assert "2 ranks" in log and log.count("iteration ") == 25
    # every progress line, in order, though they are written in batches (cli.BatchedStreamHandler)
    assert re.findall(r"iteration +(\d+)/25", log) == [str(i) for i in range(1, 26)]
    assert "wrote" in log.strip().splitlines()[-1]


def test_n_smaller_than_ranks_times_block(tmp_path):
    """More ranks than blocks: idle ranks contribute nothing and the result is unchanged."""
    patches = make_patches_file(tmp_path / "p.h5", 50)
    for ranks in (1, 3):
        mpirun(ranks, *train_args(patches, tmp_path / f"m{ranks}.h5", iterations=5, block_size=32))
    assert np.array_equal(read(tmp_path / "m1.h5")[0]["W1"], read(tmp_path / "m3.h5")[0]["W1"])


def write_bad(path, kind):
    with h5py.File(path, "w") as f:
        if kind == "no patches":
            f.create_dataset("other", data=np.zeros((10, 64)))
        elif kind == "wrong width":
            f.create_dataset("patches", data=np.zeros((10, 49)))


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("no patches", "no dataset 'patches'"),
        ("wrong width", r"shape \(10, 49\), expected \(N, 64\) for side 8"),
        ("not hdf5", "not a readable HDF5 patches file"),
        ("missing", "no such file"),
    ],
)
@pytest.mark.parametrize("ranks", [1, 2])
def test_bad_patches_file_fails_with_one_line_and_writes_nothing(tmp_path, kind, message, ranks):
    path = tmp_path / "patches.h5"
    if kind == "not hdf5":
        path.write_text("just text")
    elif kind != "missing":
        write_bad(path, kind)
    model = tmp_path / "model.h5"
    proc = mpirun(ranks, *train_args(path, model), check=False)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1  # one rank reports; every rank exits
    assert str(path) in errors[0]
    assert re.search(message, errors[0])
    assert "iteration" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == (["patches.h5"] if kind != "missing" else [])


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.h5"
    with pytest.raises(RuntimeError), h5io.atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_samples_trains_on_the_first_rows_only(tmp_path, patches_1001):
    """--samples N on a larger file = training on a file of exactly those N rows."""
    with h5py.File(patches_1001) as f:
        first = f["patches"][:600]
    h5io.write_patches(tmp_path / "first.h5", 600, 64, [first], {})
    mpirun(2, *train_args(patches_1001, tmp_path / "a.h5", iterations=5), "--samples", 600)
    mpirun(1, *train_args(tmp_path / "first.h5", tmp_path / "b.h5", iterations=5))
    a, attrs = read(tmp_path / "a.h5")
    assert np.array_equal(a["W1"], read(tmp_path / "b.h5")[0]["W1"]) and attrs["samples"] == 600
    proc = mpirun(2, *train_args(patches_1001, tmp_path / "c.h5"), "--samples", 2000, check=False)
    assert proc.returncode != 0 and "2000 samples requested, the file has 1001" in proc.stderr


def test_float64_training_is_rank_invariant_too(tmp_path, patches_1001):
    for ranks in (1, 3):
        model = tmp_path / f"m{ranks}.h5"
        mpirun(ranks, *train_args(patches_1001, model, iterations=10, precision="float64"))
    one, attrs = read(tmp_path / "m1.h5")
    assert np.array_equal(one["W1"], read(tmp_path / "m3.h5")[0]["W1"]) and attrs["precision"] == "float64"
