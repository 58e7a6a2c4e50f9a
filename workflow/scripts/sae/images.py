"""Loading natural images as grayscale float64 arrays, and whitening them."""

from __future__ import annotations

import hashlib
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
F0 = 0.4  # cutoff in cycles per pixel: 0.4 x image size in cycles per picture


def sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def to_gray(img: np.ndarray) -> np.ndarray:
    """A 2-D float64 image from gray, gray+alpha, RGB or RGBA pixels."""
    from skimage.color import rgb2gray
    from skimage.util import img_as_float64

    img = img_as_float64(img) if img.dtype.kind in "ub" else np.asarray(img, dtype=np.float64)
    if img.ndim == 3 and img.shape[2] in (2, 4):
        img = img[..., :-1]  # drop alpha
    if img.ndim == 3 and img.shape[2] == 3:
        img = rgb2gray(img)
    elif img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    return img


def square(img: np.ndarray, side: int) -> np.ndarray:
    """Central square crop, resized to side x side with anti-aliasing."""
    from skimage.transform import resize

    h, w = img.shape
    m = min(h, w)
    top, left = (h - m) // 2, (w - m) // 2
    return resize(img[top : top + m, left : left + m], (side, side), anti_aliasing=True)


def sample_images():
    """The ten sample photographs as 512 x 512 grayscale: (images, names, digests)."""
    import skimage.data
    from skimage.io import imread

    folder = Path(skimage.data.__file__).parent
    images, names, digests = [], [], []
    for name, filename in SAMPLE_FILES.items():
        path = folder / filename
        images.append(square(to_gray(imread(path)), SAMPLE_SIDE))
        names.append(f"skimage:{name}")
        digests.append(sha256(path))
    return images, names, digests


def read_file(path) -> list[np.ndarray]:
    """The grayscale images in one file; a stack (.npy 3-D, IMAGES.mat) gives several."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            data = np.load(path, allow_pickle=False)
            stack = data[..., None] if data.ndim == 2 else data
        elif suffix == ".mat":
            stack = _read_mat(path)
        else:
            from skimage.io import imread

            return [to_gray(imread(path))]
    except SaeError:
        raise
    except FileNotFoundError:
        raise SaeError(f"{path}: no such file") from None
    except Exception as err:  # every reader has its own errors for a bad file
        first_line = next((line for line in str(err).splitlines() if line.strip()), "")
        raise SaeError(f"{path}: cannot read image ({type(err).__name__}: {first_line})") from None
    if stack.ndim != 3:
        raise SaeError(f"{path}: expected a 2-D image or an H x W x K stack, got shape {stack.shape}")
    return [np.asarray(stack[:, :, k], dtype=np.float64) for k in range(stack.shape[2])]


def _read_mat(path: Path) -> np.ndarray:
    """The array IMAGES (H x W x K) of a MATLAB file, v5 or v7.3 (HDF5)."""
    import scipy.io

    try:
        mat = scipy.io.loadmat(path, variable_names=["IMAGES"])
        if "IMAGES" not in mat:
            raise SaeError(f"{path}: no variable 'IMAGES'")
        return mat["IMAGES"]
    except NotImplementedError:  # v7.3 files are HDF5, stored transposed
        import h5py

        with h5py.File(path, "r") as f:
            if "IMAGES" not in f:
                raise SaeError(f"{path}: no variable 'IMAGES'") from None
            return np.transpose(f["IMAGES"][()])


def load_files(paths):
    """(images, names, digests) for a list of files; a stack names each layer."""
    images, names, digests = [], [], []
    for path in paths:
        layers = read_file(path)
        digest = sha256(path)
        for k, img in enumerate(layers):
            images.append(img)
            names.append(str(path) if len(layers) == 1 else f"{path}[{k}]")
            digests.append(digest)
    return images, names, digests


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
    f = np.hypot(fx, fy)
    filt = f * np.exp(-((f / f0) ** 4))
    out = np.fft.irfft2(np.fft.rfft2(img) * filt, s=img.shape)
    return out * np.sqrt(variance / out.var())


def load(source, whiten: bool):
    """Images from ``source`` ("sample" or a list of files), checked and, if ``whiten``, whitened."""
    images, names, digests = sample_images() if source == "sample" else load_files(source)
    for img, name in zip(images, names, strict=True):
        check(img, name)
    if whiten:
        images = [whiten_image(img) for img in images]
    return images, names, digests
