"""HDF5 layout of the workflow's files, and atomic writes.

images.h5   group ``images``: one 2-D float64 dataset per image, named 000, 001, ...
            with attributes ``name`` and ``sha256`` (of the source file);
            file attributes ``whitened`` and ``variance``.
patches.h5  dataset ``patches`` (N, side*side) float32, one row per patch, chunked
            by rows; attributes ``seed``, ``side``, ``count``, ``sigma``,
            ``sources``, ``sha256``.
model.h5    datasets ``W1`` (h, v), ``W2`` (v, h), ``b1`` (h), ``b2`` (v),
            ``history`` (iterations, 3) with columns cost, grad_norm, seconds;
            attributes ``cost``, ``iterations``, ``evaluations``, ``ranks``,
            ``train_seconds`` and every hyperparameter.

Every file is written under a temporary name in the same folder and renamed
when complete, so a reader never sees a half-written file.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import h5py
import numpy as np

from . import SaeError

ROWS_PER_CHUNK = 4096


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; rename it to ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def open_input(path, kind: str) -> h5py.File:
    """Open an HDF5 input read-only, with a one-line error if it is not one."""
    try:
        return h5py.File(path, "r")
    except FileNotFoundError:
        raise SaeError(f"{path}: no such file") from None
    except OSError as err:
        raise SaeError(f"{path}: not a readable HDF5 {kind} file ({err})") from None


def write_images(path, images, names, digests, whitened: bool, variance: float) -> None:
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
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
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        chunk = (min(len(patches), ROWS_PER_CHUNK), patches.shape[1])
        f.create_dataset("patches", data=patches, dtype=np.float32, chunks=chunk)
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


def read_rows(path, start: int, stop: int, piece: int):
    """Rows [start, stop) of ``patches`` as hyperslabs of at most ``piece`` rows (a generator)."""
    with open_input(path, "patches") as f:
        ds = f["patches"]
        for a in range(start, stop, piece):
            yield ds[a : min(a + piece, stop)]


def write_model(path, params: dict, history: np.ndarray, attrs: dict) -> None:
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        for name, value in params.items():
            f.create_dataset(name, data=value)
        hist = f.create_dataset("history", data=history)
        hist.attrs["columns"] = ["cost", "grad_norm", "seconds"]
        f.attrs.update(attrs)


def read_model(path):
    """(params dict W1, W2, b1, b2; attributes dict) from a model file."""
    with open_input(path, "model") as f:
        missing = [k for k in ("W1", "W2", "b1", "b2") if k not in f]
        if missing:
            raise SaeError(f"{path}: missing datasets {', '.join(missing)}")
        return {k: f[k][()] for k in ("W1", "W2", "b1", "b2")}, dict(f.attrs)
