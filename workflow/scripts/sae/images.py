"""Loading natural images as grayscale float64 arrays, and whitening them."""

from __future__ import annotations

import collections
import contextlib
import functools
import glob
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from . import SaeError

# Photographs that ship inside the scikit-image wheel (no download).
SAMPLE_FILES = {
    "camera": "camera.png",
    "astronaut": "astronaut.png",
    "grass": "grass.png",
    "gravel": "gravel.png",
    "brick": "brick.png",
    "moon": "moon.png",
    "coffee": "coffee.png",
    "chelsea": "chelsea.png",
    "motorcycle_left": "motorcycle_left.png",
    "rocket": "rocket.jpg",
}
SAMPLE_SIDE = 512
VARIANCE = 0.1  # Olshausen & Field scaled IMAGES.mat to this variance
GRAY_ROWS = 256  # rows of a colour image turned gray at a time
F0 = 0.4  # cutoff in cycles per pixel: 0.4 x image size in cycles per picture


# What a folder in images.source stands for: the files directly in it with these suffixes.
SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".npy", ".mat")
STACKS = (".npy", ".mat")  # files that may hold several images (H x W x K)


def source_files(source) -> list[str]:
    """The image files config images.source names, in order, each once.

    source: a file, a glob (``**`` for any depth of folders) or a folder, or a list of
    them (an existing file or folder is taken by its name, even if it looks like a
    glob). A folder (listed, or
    matched by a glob) stands for the files directly in it whose suffix is one of
    SUFFIXES, in any case, sorted by name; hidden files are left out. A file listed
    twice, or matched by two entries, is taken once, where it first appears.
    """
    files = []
    for entry in [source] if isinstance(source, str) else source:
        literal = os.path.exists(entry) or not glob.has_magic(entry)  # "photo[1].png" is a name
        matches = [entry] if literal else sorted(glob.glob(entry, recursive=True))
        if not matches:
            raise SaeError(f"config images.source: {entry!r} matches no files")
        for match in matches:
            if os.path.isdir(match):
                found = sorted(
                    e.path
                    for e in os.scandir(match)
                    if e.is_file() and not e.name.startswith(".") and e.name.lower().endswith(SUFFIXES)
                )
                if not found:
                    kinds = ", ".join(SUFFIXES)
                    raise SaeError(f"config images.source: folder {match!r} holds no image files ({kinds})")
                files.extend(found)
            elif os.path.isfile(match):
                files.append(match)
            else:
                raise SaeError(f"config images.source: no such file {match!r}")
    first = {}  # each file under the name it first appears with
    for f in files:
        first.setdefault(os.path.realpath(f), f)
    return list(first.values())


def sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def to_gray(img: np.ndarray) -> np.ndarray:
    """A 2-D float64 image from gray, gray+alpha, RGB or RGBA pixels.

    Colour goes to gray a band of GRAY_ROWS rows at a time, so that a 12-megapixel
    photograph needs no float64 copy of all its channels (288 MB) on the way.
    """
    from skimage.color import rgb2gray
    from skimage.util import img_as_float64

    def as_float(pixels):
        return img_as_float64(pixels) if pixels.dtype.kind in "ub" else np.asarray(pixels, dtype=np.float64)

    if img.ndim == 3 and img.shape[2] in (2, 4):
        img = img[..., :-1]  # drop alpha
    if img.ndim == 3 and img.shape[2] == 3:
        gray = np.empty(img.shape[:2])
        for a in range(0, len(img), GRAY_ROWS):
            gray[a : a + GRAY_ROWS] = rgb2gray(as_float(img[a : a + GRAY_ROWS]))
        return gray
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    return as_float(img)


def square(img: np.ndarray, side: int) -> np.ndarray:
    """Central square crop, resized to side x side with anti-aliasing."""
    from skimage.transform import resize

    h, w = img.shape
    m = min(h, w)
    top, left = (h - m) // 2, (w - m) // 2
    return resize(img[top : top + m, left : left + m], (side, side), anti_aliasing=True)


def downscale(img: np.ndarray, shorter_side: int | None) -> np.ndarray:
    """img resized, anti-aliased, so that its shorter side is ``shorter_side`` pixels.

    The aspect ratio is kept. An image whose shorter side is already no longer,
    or shorter_side None, is returned as it is (never enlarged).
    """
    h, w = img.shape
    if shorter_side is None or min(h, w) <= shorter_side:
        return img
    from skimage.transform import resize

    if h <= w:
        shape = (shorter_side, max(shorter_side, round(w * shorter_side / h)))
    else:
        shape = (max(shorter_side, round(h * shorter_side / w)), shorter_side)
    return resize(img, shape, anti_aliasing=True)


def sample_images():
    """The ten sample photographs as 512 x 512 grayscale: (image, name, sha256) one at a time."""
    import skimage.data
    from skimage.io import imread

    folder = Path(skimage.data.__file__).parent
    for name, filename in SAMPLE_FILES.items():
        path = folder / filename
        yield square(to_gray(imread(path)), SAMPLE_SIDE), f"skimage:{name}", sha256(path)


@contextlib.contextmanager
def _reading(path):
    """Any reader's error for a bad file as one SaeError naming it."""
    try:
        yield
    except SaeError:
        raise
    except FileNotFoundError:
        raise SaeError(f"{path}: no such file") from None
    except Exception as err:  # every reader has its own errors for a bad file
        first_line = next((line for line in str(err).splitlines() if line.strip()), "")
        raise SaeError(f"{path}: cannot read image ({type(err).__name__}: {first_line})") from None


def _stack(path: Path):
    """The images of one file as an H x W x K array-like; layers are read when indexed.

    A .npy file is memory-mapped and a v7.3 (HDF5) IMAGES.mat read layer by layer,
    so a stack larger than memory works; a v5 .mat file is read whole.
    """
    suffix = path.suffix.lower()
    if suffix == ".npy":
        data = np.load(path, mmap_mode="r", allow_pickle=False)
        stack = data[..., None] if data.ndim == 2 else data
    elif suffix == ".mat":
        stack = _read_mat(path)
    else:
        stack = to_gray(_pixels(path))[..., None]
    if stack.ndim != 3:
        raise SaeError(f"{path}: expected a 2-D image or an H x W x K stack, got shape {stack.shape}")
    return stack


def _pixels(path: Path) -> np.ndarray:
    """The pixels of an image file; a CMYK one (from print work) converted to RGB.

    skimage's reader returns CMYK's four channels as they are, which would pass
    for RGBA; Pillow converts them.
    """
    from PIL import Image, UnidentifiedImageError
    from skimage.io import imread

    try:
        with Image.open(path) as img:
            if img.mode == "CMYK":
                return np.asarray(img.convert("RGB"))
    except UnidentifiedImageError:
        pass  # not for Pillow; skimage's reader may know the format
    return imread(path)


def read_file(path):
    """The grayscale images in one file as (image, name), one at a time.

    A stack (.npy 3-D, IMAGES.mat) gives several, named path[k].
    """
    path = Path(path)
    with _reading(path):
        stack = _stack(path)
        try:
            layers = stack.shape[2]
            for k in range(layers):
                name = str(path) if layers == 1 else f"{path}[{k}]"
                yield np.array(stack[:, :, k], dtype=np.float64), name
        finally:
            if isinstance(stack, _Transposed):  # an open HDF5 file
                stack.close()


def _read_mat(path: Path):
    """The array IMAGES (H x W x K) of a MATLAB file, v5 or v7.3 (HDF5, read lazily)."""
    import scipy.io

    try:
        mat = scipy.io.loadmat(path, variable_names=["IMAGES"])
        if "IMAGES" not in mat:
            raise SaeError(f"{path}: no variable 'IMAGES'")
        return mat["IMAGES"]
    except NotImplementedError:  # v7.3 files are HDF5, stored transposed
        import h5py

        f = h5py.File(path, "r")
        if "IMAGES" not in f:
            f.close()
            raise SaeError(f"{path}: no variable 'IMAGES'") from None
        return _Transposed(f["IMAGES"])


class _Transposed:
    """A v7.3 MATLAB array (stored K x W x H) as H x W x K; ``[:, :, k]`` reads one layer."""

    def __init__(self, dataset):
        self.dataset = dataset
        self.shape = dataset.shape[::-1]
        self.ndim = dataset.ndim

    def __getitem__(self, key):
        return np.transpose(self.dataset[key[::-1]])

    def close(self) -> None:
        self.dataset.file.close()


def load_files(paths):
    """(image, name, sha256) for each image of a list of files, one at a time."""
    for path in paths:
        digest = None
        for img, name in read_file(path):
            digest = digest or sha256(path)
            yield img, name, digest


def check(img: np.ndarray, name: str) -> None:
    """One-line errors for images that cannot be trained on."""
    if img.ndim != 2 or min(img.shape) < 1:
        raise SaeError(f"{name}: expected a 2-D image, got shape {img.shape}")
    if not np.isfinite(img).all():
        raise SaeError(f"{name}: image has NaN or Inf pixels")
    if img.min() == img.max():
        raise SaeError(f"{name}: image is constant")


def whiten_image(img: np.ndarray, f0: float = F0, variance: float = VARIANCE) -> np.ndarray:
    """Olshausen & Field's whitening: spectrum times f exp(-(f/f0)^4), then fixed variance.

    f is the radial spatial frequency in cycles per pixel, so f0 = 0.4 is
    0.4 x image size in cycles per picture. R(0) = 0 removes the mean.
    """
    fy = np.fft.fftfreq(img.shape[0])[:, None]
    fx = np.fft.rfftfreq(img.shape[1])[None, :]
    # In place and freed early: a 12-megapixel image takes about 3 more of its size, not 6.
    f = np.hypot(fx, fy)
    filt = np.divide(f, f0)
    np.power(filt, 4, out=filt)
    np.negative(filt, out=filt)
    np.exp(filt, out=filt)
    filt *= f  # f exp(-(f/f0)^4)
    del f
    spectrum = np.fft.rfft2(img)
    spectrum *= filt
    del filt
    out = np.fft.irfft2(spectrum, s=img.shape)
    del spectrum
    out *= np.sqrt(variance / out.var())
    return out


def load(source, whiten: bool, shorter_side: int | None = None, workers: int = 1):
    """(image, name, sha256) from ``source`` ("sample" or a list of files), in order, each
    checked, downscaled to ``shorter_side`` (see ``downscale``) and, if ``whiten``, whitened.

    ``workers`` threads prepare images side by side (most of the work runs in C, outside
    the GIL): a file of one image is read in its worker, the samples and the layers of a
    stack here, as they come. An image is the same bits for any number of
    workers, and at most 2 x workers images are in memory at once.
    """

    def prepare(img, name, digest):
        check(img, name)
        img = downscale(img, shorter_side)
        return (whiten_image(img) if whiten else img), name, digest

    def read_and_prepare(path):
        ((img, name, digest),) = load_files([path])
        return prepare(img, name, digest)

    def jobs():
        if source == "sample":
            yield from (functools.partial(prepare, *item) for item in sample_images())
            return
        for path in map(Path, source):
            if path.suffix.lower() in STACKS:  # read here, a layer at a time
                yield from (functools.partial(prepare, *item) for item in load_files([path]))
            else:
                yield functools.partial(read_and_prepare, path)

    return in_order(jobs(), workers)


def in_order(jobs, workers: int):
    """The result of each callable of ``jobs``, in order; ``workers`` threads call them
    side by side, at most 2 x workers ahead of the one yielded. A job's error is raised
    when its turn comes, whichever job failed first (an error of the iterable ``jobs``
    itself at once), and the jobs not started are dropped.
    """
    if workers <= 1:
        yield from (job() for job in jobs)
        return
    pool = ThreadPoolExecutor(workers, thread_name_prefix="images")
    pending = collections.deque()
    try:
        for job in jobs:
            pending.append(pool.submit(job))
            if len(pending) == 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(cancel_futures=True)
