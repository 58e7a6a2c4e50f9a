"""HDF5 layout of the workflow's files, the model's timing attribute names, and atomic writes.

Owns every file name inside a file: what the stages write and read is spelled here.

images.h5   group ``images``: one 2-D float64 dataset per image, named 000, 001, ...
            with attributes ``name`` and ``sha256`` (of the source file);
            file attributes ``whitened`` and ``variance``.
patches.h5  dataset ``patches`` (N, side*side) float32, one row per patch, chunked
            by rows with a Fletcher-32 checksum per chunk (corruption is an
            error); attributes ``seed``, ``side``, ``count``, ``sigma``,
            ``sources``, ``sha256``.
checkpoint  group ``optimizer``: the optimizer's whole state, one dataset per
            array (see lbfgs.LBFGS.state; the vectors whole, whatever the rank
            count), its numbers in one dataset ``scalars``; datasets ``history``
            and ``resumes``; attribute ``fingerprint`` (JSON: hyperparameters,
            data identity, optimizer and numpy versions).
model.h5    datasets ``W1`` (h, v), ``W2`` (v, h), ``b1`` (h), ``b2`` (v),
            ``history`` (iterations, 3) with columns cost, grad_norm, seconds;
            attributes ``cost``, ``iterations``, ``evaluations``, ``ranks``,
            ``train_seconds``, every hyperparameter, and the timings named by
            TIMING_ATTRS (written by training, read by the sweep).

Every file is written straight to disk (never assembled in memory, so files larger
than memory work) under a temporary name in the same folder, and renamed when
complete: a reader never sees a half-written file. The disk space is reserved before
HDF5 writes (HDF5 crashes the process when a file is closed after a failed write), so a
full disk is an error before the file is touched; any failure removes the temporary
file, and the earlier file stays in place.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from . import SaeError

ROWS_PER_CHUNK = 4096

# The model file's timing attributes, the contract between training (which writes them) and
# the sweep (which reads them). Every rank times the parts of RANK_TIMINGS (optimizer: its
# loop outside compute and collectives); the file holds each as max and mean over ranks,
# e.g. loop_seconds_max, then the whole run's wall seconds.
RANK_TIMINGS = ("load", "loop", "compute", "comm", "optimizer")
OVER_RANKS = ("max", "mean")
WALL_SECONDS = "wall_seconds"


def timing_attr(part: str, over: str) -> str:
    """The attribute holding a per-rank timing's max or mean over ranks: loop, max -> loop_seconds_max."""
    return f"{part}_seconds_{over}"


RANK_TIMING_ATTRS = tuple(timing_attr(part, over) for part in RANK_TIMINGS for over in OVER_RANKS)
TIMING_ATTRS = (*RANK_TIMING_ATTRS, WALL_SECONDS)


def rank_timing_attrs(per_rank: np.ndarray) -> dict:
    """RANK_TIMING_ATTRS from per-rank seconds, one row per rank and one column per RANK_TIMINGS."""
    return {
        timing_attr(part, over): getattr(per_rank[:, i], over)()
        for i, part in enumerate(RANK_TIMINGS)
        for over in OVER_RANKS
    }


SLACK = 16 * 1024  # bytes reserved beyond a file's data for HDF5's own structures, plus 1/32


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
def new_file(path, nbytes: int):
    """An HDF5 file written to disk under a temporary name (``atomic_path``).

    nbytes: the bytes of data and attributes it will hold. HDF5 does not survive a
    failed write (closing the file afterwards crashes the process), so the disk space
    is reserved before HDF5 writes anything (``reserve``): a full disk is an error
    then, before the file is touched. Any failure is one SaeError naming ``path``;
    the temporary file is removed and an earlier ``path`` is left as it was.
    """
    with atomic_path(path) as tmp:
        free = shutil.disk_usage(tmp.parent).free
        if _reserved(nbytes) > free:
            raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} ({free / 2**20:.1f} MB free)")
        try:
            with h5py.File(tmp, "w") as f:
                reserve(f, nbytes)
                yield f
                f.flush()
                size = f.id.get_filesize()
        except RuntimeError as err:  # HDF5's own write errors
            raise OSError(_first_line(err)) from None
        os.truncate(tmp, size)  # the unused part of the reservation


def _reserved(nbytes: int) -> int:
    return nbytes + nbytes // 32 + SLACK


def reserve(f: h5py.File, nbytes: int) -> None:
    """Allocate disk space for the first ``nbytes`` of data of file ``f`` (plus slack) now.

    A file written as it goes (images.h5) reserves again before each addition.
    """
    fd = os.open(f.filename, os.O_WRONLY)
    try:
        os.posix_fallocate(fd, 0, _reserved(nbytes))
    finally:
        os.close(fd)


def arrays_bytes(arrays: dict) -> int:
    """The bytes of the data of a dict of arrays (datasets)."""
    return sum(np.asarray(value).nbytes for value in arrays.values())


def attrs_bytes(attrs: dict) -> int:
    """An upper bound of the bytes of a dict of HDF5 attributes."""
    return sum(np.asarray(value).nbytes + 128 for value in attrs.values())


def _first_line(err: Exception) -> str:
    """The system's own message in an HDF5 error, else the error's first line."""
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
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


def write_images(path, images, whitened: bool, variance: float) -> int:
    """Write (image, name, sha256) triples as they come, one image in memory at a time.

    Returns the number of images written.
    """
    with new_file(path, 0) as f:
        f.attrs["whitened"] = whitened
        f.attrs["variance"] = variance
        group = f.create_group("images")
        count = nbytes = 0
        for count, (img, name, digest) in enumerate(images, start=1):
            nbytes += img.nbytes + attrs_bytes({"name": name, "sha256": digest}) + 1024
            reserve(f, nbytes)
            ds = group.create_dataset(f"{count - 1:03d}", data=img)
            ds.attrs["name"] = name
            ds.attrs["sha256"] = digest
    return count


class _InputFile:
    """An input kept open in ``self.file``; closed by ``close`` or at the end of a with block."""

    def close(self) -> None:
        self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class ImagesFile(_InputFile):
    """The images of an images.h5 file, read as they are needed.

    ``shapes``, ``names`` and ``digests`` come from the metadata; ``images[k]`` reads
    image k, keeping recently read images up to ``cache_mb`` in memory.
    """

    def __init__(self, path, cache_mb: float = 256):
        self.path = path
        self.file = open_input(path, "images")
        if "images" not in self.file or not len(self.file["images"]):
            self.file.close()
            raise SaeError(f"{path}: no images in group 'images'")
        group = self.file["images"]
        try:  # datasets 000, 001, ..., 999, 1000, ...: in the order written, not as strings sort
            self.datasets = [group[key] for key in sorted(group, key=int)]
        except ValueError:
            self.file.close()
            raise SaeError(f"{path}: group 'images' holds a dataset not named by its number") from None
        self.shapes = [ds.shape for ds in self.datasets]
        self.names = [str(ds.attrs["name"]) for ds in self.datasets]
        self.digests = [str(ds.attrs["sha256"]) for ds in self.datasets]
        self.cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self.cache_bytes, self.budget = 0, cache_mb * 2**20

    def __len__(self) -> int:
        return len(self.datasets)

    def __getitem__(self, k: int) -> np.ndarray:
        if k in self.cache:
            self.cache.move_to_end(k)
            return self.cache[k]
        try:
            img = self.datasets[k][()]
        except (OSError, RuntimeError) as err:  # truncated or damaged
            raise SaeError(f"{self.path}: cannot read image {self.names[k]} ({_first_line(err)})") from None
        while self.cache and self.cache_bytes + img.nbytes > self.budget:
            self.cache_bytes -= self.cache.popitem(last=False)[1].nbytes
        self.cache[k] = img
        self.cache_bytes += img.nbytes
        return img


def write_patches(path, count: int, width: int, pieces, attrs: dict) -> None:
    """Write ``count`` rows of ``width`` float32 values from ``pieces`` (arrays in row order)."""
    with new_file(path, count * width * 4 + attrs_bytes(attrs)) as f:
        chunk = (min(count, ROWS_PER_CHUNK), width)
        ds = f.create_dataset("patches", (count, width), dtype=np.float32, chunks=chunk, fletcher32=True)
        done = 0
        for piece in pieces:
            ds[done : done + len(piece)] = piece
            done += len(piece)
        if done != count:
            raise SaeError(f"{path}: {done} patches written, {count} expected")
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


class PatchRows(_InputFile):
    """Rows of a patches file, read as hyperslabs from a dataset kept open."""

    def __init__(self, path):
        self.path = path
        self.file = open_input(path, "patches")
        self.dataset = self.file["patches"]
        self.width = self.dataset.shape[1]
        self.dtype = self.dataset.dtype
        self.itemsize = self.dtype.itemsize
        ds = self.dataset
        # The layout write_patches makes: row chunks of whole rows, a checksum and no other filter.
        plain = ds.chunks is not None and ds.chunks[1] == self.width and ds.fletcher32
        plain = plain and ds.compression is None and not ds.shuffle and ds.scaleoffset is None
        self.chunk_rows = ds.chunks[0] if plain and self.dtype.isnative else None
        direct = self.chunk_rows and hasattr(os, "preadv")  # os.preadv: Linux, BSD, recent macOS
        self.fd = os.open(path, os.O_RDONLY) if direct else None  # for reread

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        super().close()

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

    def reread(self, start: int, stop: int, out: np.ndarray) -> np.ndarray:
        """Rows [start, stop) that ``read`` has checked before, into out[: stop - start].

        Each chunk's rows are read as stored, past HDF5's filter pipeline (the
        checksums are not checked again), straight from the file into ``out``:
        just the rows asked for, and with Python's GIL released, so that a
        reader thread does not hold up the compute. Other layouts use ``read``.
        """
        if self.fd is None or out.dtype != self.dtype or not out.flags.c_contiguous:
            return self.read(start, stop, out)
        rows, row_bytes, done = self.chunk_rows, self.width * self.itemsize, 0
        try:
            for c in range(start // rows, -(-stop // rows)):
                stored = self.dataset.id.get_chunk_info_by_coord((c * rows, 0))
                if stored.filter_mask or stored.size != rows * row_bytes + 4:  # not the plain layout
                    return self.read(start, stop, out)
                lo, hi = max(start, c * rows) - c * rows, min(stop, (c + 1) * rows) - c * rows
                wanted = memoryview(out[done : done + hi - lo]).cast("B")
                if os.preadv(self.fd, [wanted], stored.byte_offset + lo * row_bytes) != len(wanted):
                    raise OSError("file ends inside a chunk")
                done += hi - lo
        except (OSError, RuntimeError, ValueError) as err:
            raise SaeError(
                f"{self.path}: cannot read rows {start}-{stop}, damaged file ({_first_line(err)})"
            ) from None
        return out[: stop - start]


def write_model(path, params: dict, history: np.ndarray, attrs: dict) -> None:
    nbytes = arrays_bytes(params) + history.nbytes + attrs_bytes(attrs)
    with new_file(path, nbytes) as f:
        for name, value in params.items():
            f.create_dataset(name, data=value)
        hist = f.create_dataset("history", data=history)
        hist.attrs["columns"] = ["cost", "grad_norm", "seconds"]
        f.attrs.update(attrs)


@dataclass
class Split:
    """An array whose last axis is split over the ranks, for a checkpoint: its whole shape, and
    its rows (the whole last axis each), handed over one at a time (gathered as written)."""

    shape: tuple
    rows: Iterable[np.ndarray]


def write_checkpoint(path, optimizer: dict, history: np.ndarray, resumes, fingerprint: dict) -> None:
    """The optimizer's state (arrays by name; Split ones written row by row), the history and
    the iterations the training was resumed after so far; ``fingerprint`` (JSON) names what it fits.

    The state's arrays are datasets of group "optimizer"; a Split one's dataset has the
    attribute ``split`` (read_checkpoint reads a rank's part of it). Its single numbers
    (0-d arrays) go together into one float64 dataset "scalars", their names into its
    attribute "names" (integers up to 2**53 are exact): each HDF5 dataset or attribute
    costs ~0.1 ms.
    """
    split = {name: value for name, value in optimizer.items() if isinstance(value, Split)}
    arrays = {name: value for name, value in optimizer.items() if name not in split and np.ndim(value)}
    scalars = {name: float(value) for name, value in optimizer.items() if name not in split | arrays}
    resumes = np.asarray(resumes, dtype=np.int64).reshape(-1)
    nbytes = arrays_bytes(arrays) + 8 * len(scalars) + history.nbytes + resumes.nbytes
    nbytes += sum(8 * int(np.prod(value.shape)) + 128 for value in split.values())
    with new_file(path, nbytes + len(json.dumps([fingerprint, *scalars])) + 512) as f:
        group = f.create_group("optimizer")
        for name, value in split.items():
            data = group.create_dataset(name, shape=value.shape, dtype=np.float64)
            data.attrs["split"] = True
            for i, row in enumerate(value.rows):
                data[i if data.ndim > 1 else ...] = row
        for name, value in arrays.items():
            group.create_dataset(name, data=value)
        numbers = group.create_dataset("scalars", data=np.array(list(scalars.values()), dtype=np.float64))
        numbers.attrs["names"] = json.dumps(list(scalars))
        f.create_dataset("history", data=history)
        f.create_dataset("resumes", data=resumes)
        f.attrs["fingerprint"] = json.dumps(fingerprint, sort_keys=True)


def checkpoint_fingerprint(path) -> dict:
    """The fingerprint of a checkpoint file (what it must match to be resumed)."""
    with open_input(path, "checkpoint") as f:
        try:
            return json.loads(f.attrs["fingerprint"])
        except (KeyError, ValueError) as err:
            raise SaeError(f"{path}: not a complete checkpoint ({err})") from None


def read_checkpoint(path, lo: int = 0, hi: int | None = None):
    """(optimizer state dict, history, resumes, fingerprint) of a checkpoint file.

    Of a split array, the values [lo, hi) of its last axis (zeros past its end: the
    last slice's padding; hi None: to the end). resumes: the iterations the training
    was resumed after, oldest first.
    """
    with open_input(path, "checkpoint") as f:
        try:
            group = f["optimizer"]
            state = {}
            for name, data in group.items():
                if name == "scalars":
                    continue
                if data.attrs.get("split", False):
                    stop = data.shape[-1] if hi is None else hi
                    state[name] = np.zeros((*data.shape[:-1], stop - lo))
                    state[name][..., : max(0, min(stop, data.shape[-1]) - lo)] = data[..., lo:stop]
                else:
                    state[name] = data[()]
            names = json.loads(group["scalars"].attrs["names"])
            state.update(zip(names, group["scalars"][()], strict=True))
            resumes = [int(k) for k in f["resumes"][()]]
            return state, f["history"][()], resumes, json.loads(f.attrs["fingerprint"])
        except (KeyError, ValueError, OSError) as err:
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
