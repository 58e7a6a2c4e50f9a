"""HDF5 layout of the workflow's files, the model's timing attribute names, and atomic writes.

Owns every file name inside a file: what the stages write and read is spelled here.

images.h5   group ``images``: one 2-D float64 dataset per image, named 000, 001, ...
            with attributes ``name`` and ``sha256`` (of the source file);
            file attributes ``whitened`` and ``variance``.
patches.h5  dataset ``patches`` (N, side*side) float32, one row per patch, chunked
            by rows with a Fletcher-32 checksum per chunk (corruption is an
            error); attributes ``seed``, ``side``, ``count``, ``sigma``,
            ``sources``, ``sha256``.
checkpoint  datasets ``theta`` and ``history``; attributes ``evaluations`` and
            ``fingerprint`` (JSON: hyperparameters and data identity).
model.h5    datasets ``W1`` (h, v), ``W2`` (v, h), ``b1`` (h), ``b2`` (v),
            ``history`` (iterations, 3) with columns cost, grad_norm, seconds;
            attributes ``cost``, ``iterations``, ``evaluations``, ``ranks``,
            ``train_seconds``, every hyperparameter, and the timings named by
            TIMING_ATTRS (written by training, read by the sweep).

Every file is assembled in memory, written under a temporary name in the same
folder and renamed when complete, so a reader never sees a half-written file
and a full disk leaves the earlier file in place.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
from pathlib import Path

import h5py
import numpy as np

from . import SaeError

ROWS_PER_CHUNK = 4096

# The model file's timing attributes, the contract between training (which writes them) and
# the sweep (which reads them). Every rank times the parts of RANK_TIMINGS; the file holds
# each as max and mean over ranks, e.g. loop_seconds_max, then rank 0's optimizer seconds
# (its loop outside compute and collectives) and the whole run's wall seconds.
RANK_TIMINGS = ("load", "loop", "compute", "comm")
OVER_RANKS = ("max", "mean")
OPTIMIZER_SECONDS = "optimizer_seconds"
WALL_SECONDS = "wall_seconds"


def timing_attr(part: str, over: str) -> str:
    """The attribute holding a per-rank timing's max or mean over ranks: loop, max -> loop_seconds_max."""
    return f"{part}_seconds_{over}"


RANK_TIMING_ATTRS = tuple(timing_attr(part, over) for part in RANK_TIMINGS for over in OVER_RANKS)
TIMING_ATTRS = (*RANK_TIMING_ATTRS, OPTIMIZER_SECONDS, WALL_SECONDS)


def rank_timing_attrs(per_rank: np.ndarray) -> dict:
    """RANK_TIMING_ATTRS from per-rank seconds, one row per rank and one column per RANK_TIMINGS."""
    return {
        timing_attr(part, over): getattr(per_rank[:, i], over)()
        for i, part in enumerate(RANK_TIMINGS)
        for over in OVER_RANKS
    }


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; rename it to ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as err:  # a full disk, a read-only folder
        raise SaeError(f"cannot write {path}: {_first_line(err)}") from None
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def new_file(path):
    """An HDF5 file built in memory, then written to ``path`` atomically.

    Only plain file writes touch the disk, so a full disk is a clean OSError
    (HDF5 itself does not survive running out of space mid-write).
    """
    image = io.BytesIO()
    with h5py.File(image, "w") as f:
        yield f
    with atomic_path(path) as tmp:
        tmp.write_bytes(image.getbuffer())


def _first_line(err: Exception) -> str:
    """The system's own message in an HDF5 error, else the error's first line."""
    text = str(err)
    system = re.search(r"error message = '([^']*)'", text)
    if system:
        return system.group(1)
    return next((line for line in text.splitlines() if line.strip()), type(err).__name__)


def open_input(path, kind: str) -> h5py.File:
    """Open an HDF5 input read-only, with a one-line error if it is not one."""
    try:
        return h5py.File(path, "r")
    except FileNotFoundError:
        raise SaeError(f"{path}: no such file") from None
    except OSError as err:
        raise SaeError(f"{path}: not a readable HDF5 {kind} file ({_first_line(err)})") from None


def write_images(path, images, names, digests, whitened: bool, variance: float) -> None:
    with new_file(path) as f:
        f.attrs["whitened"] = whitened
        f.attrs["variance"] = variance
        group = f.create_group("images")
        for i, (img, name, digest) in enumerate(zip(images, names, digests, strict=True)):
            ds = group.create_dataset(f"{i:03d}", data=img)
            ds.attrs["name"] = name
            ds.attrs["sha256"] = digest


def read_images(path):
    """(images, names, digests) from an images.h5 file."""
    with open_input(path, "images") as f:
        if "images" not in f or not len(f["images"]):
            raise SaeError(f"{path}: no images in group 'images'")
        datasets = [f["images"][key] for key in sorted(f["images"])]
        return (
            [ds[()] for ds in datasets],
            [str(ds.attrs["name"]) for ds in datasets],
            [str(ds.attrs["sha256"]) for ds in datasets],
        )


def write_patches(path, patches: np.ndarray, attrs: dict) -> None:
    with new_file(path) as f:
        chunk = (min(len(patches), ROWS_PER_CHUNK), patches.shape[1])
        f.create_dataset("patches", data=patches, dtype=np.float32, chunks=chunk, fletcher32=True)
        f.attrs.update(attrs)


def patches_info(path, side: int):
    """Number of rows and attributes of a patches file, checked against ``side``."""
    with open_input(path, "patches") as f:
        if "patches" not in f or not isinstance(f["patches"], h5py.Dataset):
            raise SaeError(f"{path}: no dataset 'patches'")
        ds = f["patches"]
        if ds.ndim != 2 or ds.shape[1] != side * side:
            raise SaeError(
                f"{path}: dataset 'patches' has shape {ds.shape}, expected (N, {side * side}) for side {side}"
            )
        if ds.shape[0] < 1:
            raise SaeError(f"{path}: dataset 'patches' is empty")
        return ds.shape[0], dict(f.attrs)


class PatchRows:
    """Rows of a patches file, read as hyperslabs from a dataset kept open."""

    def __init__(self, path):
        self.path = path
        self.file = open_input(path, "patches")
        self.dataset = self.file["patches"]
        self.width = self.dataset.shape[1]
        self.dtype = self.dataset.dtype
        self.itemsize = self.dtype.itemsize

    def read(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """Rows [start, stop), into out[: stop - start] if given."""
        try:
            if out is None:
                return self.dataset[start:stop]
            self.dataset.read_direct(out, np.s_[start:stop], np.s_[: stop - start])
            return out[: stop - start]
        except (OSError, RuntimeError) as err:  # corrupt or truncated data
            raise SaeError(
                f"{self.path}: cannot read rows {start}-{stop}, damaged file ({_first_line(err)})"
            ) from None

    def close(self) -> None:
        self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def write_model(path, params: dict, history: np.ndarray, attrs: dict) -> None:
    with new_file(path) as f:
        for name, value in params.items():
            f.create_dataset(name, data=value)
        hist = f.create_dataset("history", data=history)
        hist.attrs["columns"] = ["cost", "grad_norm", "seconds"]
        f.attrs.update(attrs)


def write_checkpoint(
    path, theta: np.ndarray, history: np.ndarray, evaluations: int, fingerprint: dict
) -> None:
    """Parameters, history and evaluations so far; ``fingerprint`` (JSON) names config and data."""
    with new_file(path) as f:
        f.create_dataset("theta", data=theta)
        f.create_dataset("history", data=history)
        f.attrs["evaluations"] = evaluations
        f.attrs["fingerprint"] = json.dumps(fingerprint, sort_keys=True)


def read_checkpoint(path):
    """(theta, history, evaluations, fingerprint) of a checkpoint file."""
    with open_input(path, "checkpoint") as f:
        try:
            return (
                f["theta"][()],
                f["history"][()],
                int(f.attrs["evaluations"]),
                json.loads(f.attrs["fingerprint"]),
            )
        except (KeyError, ValueError) as err:
            raise SaeError(f"{path}: not a complete checkpoint ({err})") from None


def read_model(path):
    """(params dict W1, W2, b1, b2; attributes dict) from a model file."""
    with open_input(path, "model") as f:
        missing = [k for k in ("W1", "W2", "b1", "b2") if k not in f]
        if missing:
            raise SaeError(f"{path}: missing datasets {', '.join(missing)}")
        return {k: f[k][()] for k in ("W1", "W2", "b1", "b2")}, dict(f.attrs)


def read_history(path):
    """(history (iterations, 3): cost, grad_norm, seconds; attributes dict) from a model file."""
    with open_input(path, "model") as f:
        if "history" not in f:
            raise SaeError(f"{path}: missing dataset history")
        return f["history"][()].reshape(-1, 3), dict(f.attrs)
