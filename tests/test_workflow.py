"""The Snakemake workflow end to end, in a temporary copy: outputs, caching, bad input."""

import os

import h5py
import matplotlib.image
import numpy as np
import pytest

from conftest import copy_workflow, job_counts, load_config, smooth_images, snakemake, write_config


def small_config(folder, name, overrides):
    """A config file in ``folder``: tests/configs/small.yaml updated with ``overrides`` (nested dicts)."""
    return write_config(folder / name, load_config("small"), overrides)


def planned_jobs(folder, config):
    """The rules a dry run would execute, from Snakemake's job table."""
    return set(job_counts(snakemake(folder, "results/filters.png", "-n", "--configfile", config).stdout))


@pytest.fixture(scope="module")
def pipeline(small_run):
    """One full run of the small config with `snakemake --cores 2` (the session's, conftest.small_run)."""
    return small_run


def test_end_to_end_outputs(pipeline):
    folder, _, _ = pipeline
    results = folder / "results"
    with h5py.File(results / "images.h5") as f:
        assert len(f["images"]) == 10 and f.attrs["whitened"]
    with h5py.File(results / "patches.h5") as f:
        assert f["patches"].shape == (2000, 64) and f["patches"].chunks[1] == 64
        assert f.attrs["seed"] == 0 and f.attrs["side"] == 8 and f.attrs["sigma"] > 0
        assert len(f.attrs["sources"]) == 10 and len(f.attrs["sha256"]) == 10
    with h5py.File(results / "model.h5") as f:
        assert f.attrs["ranks"] == 2 and f.attrs["iterations"] == 30 and f["W1"].shape == (25, 64)
    log = (results / "logs" / "train.log").read_text()
    assert "iteration   30/30" in log
    assert not list(results.glob(".*tmp*"))  # no temporary files left behind


def test_filters_png_has_the_expected_grid(pipeline):
    folder, _, _ = pipeline
    png = matplotlib.image.imread(folder / "results" / "filters.png")
    # 25 tiles of 8 px in a 5 x 5 grid with 1 px borders: 46 px, upscaled x9 = 414 px.
    assert png.shape[:2] == (414, 414)
    gray = png[..., 0]
    assert np.array_equal(gray, png[..., 1])
    # Border lines are black; each tile spans the full gray range (scaled by its own max |w|).
    assert np.all(gray[:9, :] == 0) and np.all(gray[:, 9 * 9 : 9 * 10] == 0)
    for r in range(5):
        for c in range(5):
            tile = gray[9 * (1 + 9 * r) : 9 * (9 + 9 * r), 9 * (1 + 9 * c) : 9 * (9 + 9 * c)]
            assert tile.max() - tile.min() > 0.4


def test_nothing_changed_runs_nothing(pipeline):
    folder, config, _ = pipeline
    assert planned_jobs(folder, config) == set()


def test_changing_beta_reruns_training_and_filters_only(pipeline):
    folder, _, _ = pipeline
    config = small_config(folder, "beta.yaml", {"train": {"beta": 2.0, "iterations": 30, "ranks": 2}})
    assert planned_jobs(folder, config) == {"train", "filters"}


def test_changing_count_reruns_patches_training_and_filters(pipeline):
    folder, _, _ = pipeline
    config = small_config(folder, "count.yaml", {"patches": {"count": 3000}})
    assert planned_jobs(folder, config) == {"patches", "train", "filters"}


def test_changing_the_image_size_reruns_from_the_images_stage(pipeline):
    folder, _, _ = pipeline
    config = small_config(folder, "side.yaml", {"images": {"shorter_side": 256}})
    assert planned_jobs(folder, config) == {"images", "patches", "train", "filters"}


def test_changing_only_the_rank_count_reruns_nothing(pipeline):
    """The model does not depend on the rank count, so neither does the cache."""
    folder, _, _ = pipeline
    config = small_config(folder, "ranks.yaml", {"train": {"iterations": 30, "ranks": 3}})
    assert planned_jobs(folder, config) == set()


BAD_CONFIGS = [
    ({"train": {"rho": 0.0}}, "train.rho"),
    ({"train": {"rho": 1.0}}, "train.rho"),
    ({"train": {"lambda": -1e-4}}, "train.lambda"),
    ({"train": {"beta": -3}}, "train.beta"),
    ({"train": {"hidden": 0}}, "train.hidden"),
    ({"patches": {"count": 0}}, "patches.count"),
    ({"train": {"ranks": 0}}, "train.ranks"),
    ({"train": {"ranks": "many"}}, "train.ranks"),
    ({"train": {"learning_rate": 0.1}}, "'learning_rate' was unexpected"),
    ({"colour": {"x": 1}}, "'colour' was unexpected"),
    ({"images": {"source": ["nowhere/*.png"]}}, "matches no files"),
    ({"images": {"source": ["missing.png"]}}, "no such file 'missing.png'"),
    ({"images": {"shorter_side": 0}}, "images.shorter_side"),
    ({"images": {"shorter_side": 4}, "patches": {"side": 8}}, "images.shorter_side: 4 is smaller than"),
]


@pytest.mark.parametrize(("overrides", "names"), BAD_CONFIGS)
def test_bad_config_is_one_line_naming_the_key(workflow_copy, overrides, names):
    config = small_config(workflow_copy, "bad.yaml", overrides)
    proc = snakemake(workflow_copy, "-n", "--configfile", config, check=False)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and names in errors[0]
    assert not (workflow_copy / "results").exists()


BAD_DATA = [
    ("nan.npy", lambda p: np.save(p, np.where(np.eye(32) > 0, np.nan, 1.0)), "NaN or Inf"),
    ("flat.npy", lambda p: np.save(p, np.full((32, 32), 0.5)), "image is constant"),
    ("broken.png", lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\ngarbage"), "cannot read image"),
    ("small.npy", lambda p: np.save(p, smooth_images(1, 6)[0]), "smallest image side (6, small.npy)"),
]


@pytest.mark.parametrize(("name", "make", "message"), BAD_DATA)
def test_bad_image_data_fails_before_training_with_nothing_written(workflow_copy, name, make, message):
    make(workflow_copy / name)
    np.save(workflow_copy / "good.npy", smooth_images(1, 32)[0])
    config = small_config(workflow_copy, "bad.yaml", {"images": {"source": ["good.npy", name]}})
    proc = snakemake(workflow_copy, "--cores", "2", "--configfile", config, check=False)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0]
    results = workflow_copy / "results"
    assert not (results / "model.h5").exists() and not (results / "patches.h5").exists()
    assert not [p for p in results.iterdir() if ".tmp" in p.name]
    # Image checks fail in the first stage; the side check needs patches.side, in the second.
    assert (results / "images.h5").exists() == (name == "small.npy")


def test_a_folder_of_images_is_its_image_files_and_a_new_one_reruns_the_images_stage(workflow_copy):
    photos = workflow_copy / "my photos"
    (photos / "older").mkdir(parents=True)
    for name, img in zip(["b.npy", "A.NPY", "older/c.npy"], smooth_images(3, 32), strict=True):
        with open(photos / name, "wb") as f:  # np.save would add .npy to A.NPY
            np.save(f, img)
    (photos / "Thumbs.db").write_bytes(b"not an image")
    (photos / ".hidden.npy").write_bytes(b"not an image either")
    source = ["my photos", "my photos/b.npy"]
    config = small_config(workflow_copy, "folder.yaml", {"images": {"source": source}})
    snakemake(workflow_copy, "results/images.h5", "--cores", "2", "--configfile", config)
    with h5py.File(workflow_copy / "results" / "images.h5") as f:
        names = [f["images"][key].attrs["name"] for key in sorted(f["images"])]
    assert names == ["my photos/A.NPY", "my photos/b.npy"]  # sorted, once each, not the subfolder's
    np.save(photos / "d.npy", smooth_images(1, 32, seed=1)[0])
    proc = snakemake(workflow_copy, "results/images.h5", "-n", "--configfile", config)
    assert set(job_counts(proc.stdout)) == {"images"}


def test_more_image_files_than_a_command_line_holds(workflow_copy):
    """Their names reach the images script through a NUL-separated list, not as arguments."""
    folder = workflow_copy / ("photographs of the long expedition " * 4).strip()
    folder.mkdir()
    img = smooth_images(1, 8)[0]
    stem = "frame of a very long time lapse sequence number " * 3
    names = [f"{folder.name}/{stem}{k:05d}.npy" for k in range(9000)]
    for name in names:
        np.save(workflow_copy / name, img)
    assert sum(len(os.fsencode(n)) + 1 for n in names) > os.sysconf("SC_ARG_MAX")  # too long as arguments
    config = small_config(workflow_copy, "many.yaml", {"images": {"source": [folder.name], "whiten": False}})
    snakemake(workflow_copy, "results/images.h5", "--cores", "1", "--configfile", config)
    with h5py.File(workflow_copy / "results" / "images.h5") as f:
        assert len(f["images"]) == len(names)
        assert f["images"]["8999"].attrs["name"] == names[-1]


def test_the_reports_larger_case_trains_end_to_end(tmp_path):
    """config/large.yaml (16 x 16 patches, 400 hidden units), with fewer patches and iterations:
    the filters figure shows 400 tiles of 16 x 16."""
    copy_workflow(tmp_path)
    shorter = write_config(
        tmp_path / "shorter.yaml", {"patches": {"count": 1000}, "train": {"iterations": 3}}
    )
    snakemake(tmp_path, "results/filters.png", "--cores", "2", "--configfile", "config/large.yaml", shorter)
    with h5py.File(tmp_path / "results" / "model.h5") as f:
        assert f["W1"].shape == (400, 256) and f.attrs["side"] == 16 and f.attrs["iterations"] == 3
    assert "400 filters" in (tmp_path / "results" / "logs" / "filters.log").read_text()
    png = matplotlib.image.imread(tmp_path / "results" / "filters.png")
    # 20 x 20 tiles of 16 px with 1 px borders: 341 px, upscaled x2 = 682 px; border rows black
    assert png.shape[:2] == (682, 682)
    assert all(np.all(png[2 * 17 * k : 2 * 17 * k + 2, :, :3] == 0) for k in range(21))
