"""Image loading, checks and whitening."""

import functools
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
from skimage.io import imsave

from conftest import SCRIPTS, env, run, smooth_images
from sae import SaeError, h5io, images, patches


def test_sample_images_are_ten_512_grayscale_photographs():
    imgs, names, digests = zip(*images.sample_images(), strict=True)
    assert len(imgs) == 10 and len(set(names)) == 10
    assert all(img.shape == (512, 512) and img.dtype == np.float64 for img in imgs)
    assert all(len(d) == 64 for d in digests)
    assert all(img.std() > 0.01 for img in imgs)


def test_whitening_flattens_the_spectrum_and_fixes_the_variance():
    rng = np.random.default_rng(0)
    # 1/f noise: the amplitude spectrum of natural images.
    f = np.hypot(np.fft.fftfreq(256)[:, None], np.fft.fftfreq(256)[None, :])
    f[0, 0] = 1
    img = np.real(np.fft.ifft2(np.fft.fft2(rng.normal(size=(256, 256))) / f))
    out = images.whiten_image(img)
    assert out.var() == pytest.approx(images.VARIANCE)
    assert abs(out.mean()) < 1e-12

    def band_power(a, lo, hi):
        p = np.abs(np.fft.fft2(a)) ** 2
        return p[(f >= lo) & (f < hi)].mean()

    # Before: low frequencies dominate; after: flat up to the roll-off near f0.
    ratio_before = band_power(img, 0.02, 0.05) / band_power(img, 0.2, 0.3)
    ratio_after = band_power(out, 0.02, 0.05) / band_power(out, 0.2, 0.3)
    assert ratio_before > 20 and ratio_after < 2


def test_reads_png_rgb_npy_stack_and_mat(tmp_path):
    gray = (np.linspace(0, 255, 40 * 30).reshape(40, 30)).astype(np.uint8)
    imsave(tmp_path / "g.png", gray, check_contrast=False)
    rgb = np.stack([gray, gray // 2, 255 - gray], axis=2)
    imsave(tmp_path / "c.jpg", rgb, check_contrast=False)
    imsave(tmp_path / "t.tif", gray, check_contrast=False)
    stack = np.stack(smooth_images(3, 32), axis=2)
    np.save(tmp_path / "s.npy", stack)
    scipy.io.savemat(tmp_path / "IMAGES.mat", {"IMAGES": stack})

    imgs, names, digests = zip(
        *images.load_files(
            [
                tmp_path / "g.png",
                tmp_path / "c.jpg",
                tmp_path / "s.npy",
                tmp_path / "IMAGES.mat",
                tmp_path / "t.tif",
            ]
        ),
        strict=True,
    )
    assert [img.shape for img in imgs] == [(40, 30), (40, 30)] + [(32, 32)] * 6 + [(40, 30)]
    np.testing.assert_allclose(imgs[8], gray / 255)
    np.testing.assert_allclose(imgs[0], gray / 255)
    np.testing.assert_array_equal(imgs[2], stack[:, :, 0])
    np.testing.assert_array_equal(imgs[7], stack[:, :, 2])
    assert names[2].endswith("s.npy[0]") and digests[2] == digests[4] != digests[5]


def test_larger_images_are_downscaled_to_the_shorter_side_keeping_the_aspect(tmp_path):
    for name, shape in [("wide", (60, 90)), ("tall", (90, 61)), ("small", (20, 30))]:
        np.save(tmp_path / f"{name}.npy", smooth_images(1, 90)[0][: shape[0], : shape[1]])
    files = [tmp_path / f"{name}.npy" for name in ("wide", "tall", "small")]
    shapes = [img.shape for img, _, _ in images.load(files, whiten=False, shorter_side=30)]
    assert shapes == [(30, 45), (44, 30), (20, 30)]  # never enlarged
    assert [img.shape for img, _, _ in images.load(files, whiten=False)] == [(60, 90), (90, 61), (20, 30)]


def test_downscaling_filters_out_what_the_smaller_grid_cannot_hold():
    """Stripes at the pixel grid's Nyquist frequency over a ramp, shrunk by 3.2: gray, not moire.

    Without anti-aliasing the stripes would alias to a pattern of 0.3 in amplitude.
    """
    stripes = np.indices((96, 96)).sum(axis=0) % 2 + 0.5 * np.linspace(0, 1, 96)[:, None]
    small = images.downscale(stripes, 30)
    assert small.shape == (30, 30)
    checkers = small - small.mean(axis=1, keepdims=True)
    assert np.abs(checkers).max() < 0.01  # of 0.5 before
    assert np.corrcoef(small[:, 0], np.linspace(0, 1, 30))[0, 1] > 0.999  # the slow ramp stays


def test_the_images_script_downscales_with_shorter_side(tmp_path):
    np.save(tmp_path / "a.npy", smooth_images(1, 90)[0][:60])
    (tmp_path / "list").write_bytes(bytes(tmp_path / "a.npy") + b"\0")
    options = ["--shorter-side", "40", "--files-from", tmp_path / "list"]
    run([sys.executable, SCRIPTS / "load_images.py", *options, "--", tmp_path / "i.h5"])
    with h5io.ImagesFile(tmp_path / "i.h5") as back:
        assert back.shapes == [(40, 60)]


def test_the_images_script_gives_the_same_file_on_any_number_of_threads(tmp_path):
    """Photographs of several kinds and a stack, prepared 1 or all CPUs at a time: same bits, same order."""
    rng = np.random.default_rng(0)
    files = []
    for k, suffix in enumerate([".png", ".jpg", ".tif", ".png", ".jpg"]):
        rgb = (rng.random((70 + 9 * k, 90, 3)) * 255).astype(np.uint8)
        files.append(tmp_path / f"photo {k}{suffix}")
        imsave(files[-1], rgb, check_contrast=False)
    np.save(tmp_path / "stack.npy", np.stack(smooth_images(3, 64), axis=2))
    files.insert(2, tmp_path / "stack.npy")
    (tmp_path / "list").write_bytes(b"".join(bytes(f) + b"\0" for f in files))
    cpus = os.cpu_count()
    for threads in (1, cpus + 1):  # more than the CPUs: capped at them
        options = ["--shorter-side", 50, "--threads", threads, "--files-from", tmp_path / "list"]
        out = tmp_path / f"{threads}.h5"
        log = run([sys.executable, SCRIPTS / "load_images.py", *options, "--", out]).stderr
    assert f"threads: {cpus} ({cpus + 1} granted, capped at this machine's CPU count)" in log
    with h5io.ImagesFile(tmp_path / "1.h5") as one, h5io.ImagesFile(tmp_path / f"{cpus + 1}.h5") as many:
        assert len(one.names) == 8 and one.names == many.names and one.digests == many.digests
        assert one.names[2:5] == [f"{tmp_path / 'stack.npy'}[{k}]" for k in range(3)]
        for k in range(8):
            np.testing.assert_array_equal(one[k], many[k])


def test_ctrl_c_in_the_images_stage_is_one_line_and_leaves_no_file(tmp_path):
    """SIGINT while threads prepare photographs: status 130, one error line, no images.h5 and no
    temporary file beside it."""
    ramp = np.add.outer(np.arange(2500), np.arange(2500)) % 256
    photos = tmp_path / "photos"
    photos.mkdir()
    for k in range(8):
        imsave(photos / f"{k}.png", ((ramp + 7 * k) % 256).astype(np.uint8), check_contrast=False)
    (tmp_path / "list").write_bytes(b"".join(bytes(p) + b"\0" for p in sorted(photos.iterdir())))
    out = tmp_path / "out" / "images.h5"
    cmd = [sys.executable, SCRIPTS / "load_images.py", "--threads", 2, "--files-from", tmp_path / "list",
           "--", out]  # fmt: skip
    # SIGINT's default action in the script, as a terminal's job has it, even when these tests run
    # in the background, where the shell started them with SIGINT ignored
    proc = subprocess.Popen(
        [str(c) for c in cmd], env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not (out.parent.exists() and any(out.parent.iterdir())) and time.monotonic() < deadline:
        time.sleep(0.01)  # until the temporary file is there: images are being prepared
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and stderr.strip().splitlines()[-1] == "error: interrupted (Ctrl-C)", stderr
    assert "Traceback" not in stderr and not list(out.parent.iterdir())


def test_in_order_raises_the_first_error_in_order_and_starts_no_more_than_its_window():
    started = []

    def job(k):
        started.append(k)
        if k == 1:
            time.sleep(0.2)  # fails after job 2 has failed: still the error raised
            raise SaeError("job 1")
        if k == 2:
            raise SaeError("job 2")
        return k

    results = images.in_order((functools.partial(job, k) for k in range(100)), workers=2)
    assert next(results) == 0
    with pytest.raises(SaeError, match="job 1"):
        next(results)
    assert len(started) <= 2 * 2 + 2  # the window, not all 100
    assert list(images.in_order((functools.partial(job, k) for k in (0, 3, 4)), workers=1)) == [0, 3, 4]


def test_colour_goes_to_gray_in_bands_with_the_same_bits_as_whole():
    from skimage.color import rgb2gray
    from skimage.util import img_as_float64

    rng = np.random.default_rng(0)
    for pixels in (
        rng.integers(0, 256, (images.GRAY_ROWS * 2 + 37, 21, 3), dtype=np.uint8),
        rng.integers(0, 65536, (images.GRAY_ROWS + 1, 5, 4), dtype=np.uint16),
        rng.random((images.GRAY_ROWS + 3, 4, 3)),
    ):
        gray = images.to_gray(pixels)
        np.testing.assert_array_equal(gray, rgb2gray(img_as_float64(pixels[..., :3])))


def test_whitening_is_olshausen_and_fields_filter_bit_for_bit():
    """The in-place whitening against its formula written in one line."""
    img = np.random.default_rng(0).random((90, 71))
    f = np.hypot(np.fft.rfftfreq(71)[None, :], np.fft.fftfreq(90)[:, None])
    out = np.fft.irfft2(np.fft.rfft2(img) * (f * np.exp(-((f / images.F0) ** 4))), s=img.shape)
    np.testing.assert_array_equal(images.whiten_image(img), out * np.sqrt(images.VARIANCE / out.var()))


def test_source_files_expand_globs_and_folders_each_file_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ["set/2.png", "set/1.JPG", "set/notes.txt", "set/.x.png", "set/sub/3.png", "empty/notes.txt",
                 "odd/photo[1].png", "odd/photo1.png"]:  # fmt: skip
        Path(name).parent.mkdir(parents=True, exist_ok=True)
        Path(name).write_bytes(b"")
    assert images.source_files("set") == ["set/1.JPG", "set/2.png"]
    assert images.source_files(["set/notes.txt", "set/*", "./set/2.png"]) == [
        "set/notes.txt", "set/1.JPG", "set/2.png", "set/sub/3.png"
    ]  # fmt: skip
    assert images.source_files("set/**/*.png") == ["set/2.png", "set/sub/3.png"]
    named_like_a_glob = images.source_files(["odd/photo[1].png", "odd/photo[0-9].png"])
    assert named_like_a_glob == ["odd/photo[1].png", "odd/photo1.png"]
    for source, message in [
        ("empty", "folder 'empty' holds no image files"),
        ("none/*.png", "'none/*.png' matches no files"),
        (["set", "gone.png"], "no such file 'gone.png'"),
    ]:
        with pytest.raises(SaeError, match=re.escape(message)):
            images.source_files(source)


def test_a_cmyk_jpeg_reads_as_the_photograph_not_its_inverse(tmp_path):
    from PIL import Image

    rgb = np.stack([(255 * img / img.max()).clip(0, 255) for img in np.abs(smooth_images(3, 64))], axis=2)
    photo = Image.fromarray(rgb.astype(np.uint8))
    photo.save(tmp_path / "rgb.png")
    photo.convert("CMYK").save(tmp_path / "print.jpg", quality=95)
    (gray, _, _), (cmyk, _, _) = images.load_files([tmp_path / "rgb.png", tmp_path / "print.jpg"])
    assert cmyk.shape == gray.shape
    assert np.corrcoef(gray.ravel(), cmyk.ravel())[0, 1] > 0.98  # -1 if read as RGBA


def test_h5_roundtrip_keeps_names_and_digests(tmp_path):
    imgs = smooth_images(2, 16)
    triples = zip(imgs, ["a", "b"], ["0" * 64, "1" * 64], strict=True)
    assert h5io.write_images(tmp_path / "i.h5", triples, True, 0.1) == 2
    with h5io.ImagesFile(tmp_path / "i.h5") as back:
        assert back.names == ["a", "b"] and back.digests == ["0" * 64, "1" * 64]
        assert back.shapes == [(16, 16), (16, 16)] and len(back) == 2
        np.testing.assert_array_equal(back[1], imgs[1])


def test_images_read_back_in_the_order_written_beyond_a_thousand(tmp_path):
    img = smooth_images(1, 8)[0]
    triples = ((img + k, f"image {k}", "0" * 64) for k in range(1001))
    h5io.write_images(tmp_path / "i.h5", triples, False, 0.1)
    with h5io.ImagesFile(tmp_path / "i.h5") as back:
        assert back.names == [f"image {k}" for k in range(1001)]  # "1000" sorts before "101" as text
        np.testing.assert_array_equal(back[1000], img + 1000)
    with h5py.File(tmp_path / "i.h5", "a") as f:
        f["images"]["extra"] = img  # not a file this workflow writes
    with pytest.raises(SaeError, match="not named by its number"):
        h5io.ImagesFile(tmp_path / "i.h5")


def test_images_are_read_and_whitened_one_at_a_time(tmp_path):
    """load yields each image as it is read: a bad file late in the list fails only when reached."""
    np.save(tmp_path / "a.npy", smooth_images(1, 32)[0])
    (tmp_path / "b.png").write_bytes(b"not an image")
    loaded = images.load([tmp_path / "a.npy", tmp_path / "b.png"], whiten=True)
    img, name, _ = next(loaded)
    assert name.endswith("a.npy") and img.var() == pytest.approx(images.VARIANCE)
    with pytest.raises(SaeError, match=r"b\.png: cannot read image"):
        next(loaded)


def test_a_truncated_images_file_is_one_clear_error(tmp_path):
    h5io.write_images(tmp_path / "i.h5", ((img, "x", "0" * 64) for img in smooth_images(3, 256)), True, 0.1)
    data = (tmp_path / "i.h5").read_bytes()
    (tmp_path / "i.h5").write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(SaeError) as err:
        with h5io.ImagesFile(tmp_path / "i.h5") as imgs:
            patches.sample(imgs, 100, 8, 0)
    assert str(tmp_path / "i.h5") in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: None, "no such file"),
        (lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n not really a png"), "cannot read image"),
        (lambda p: p.write_bytes(b""), "cannot read image"),
    ],
)
def test_missing_or_corrupt_file_is_one_line_error(tmp_path, make, message):
    path = tmp_path / "bad.png"
    make(path)
    with pytest.raises(SaeError, match=message) as err:
        list(images.load([path], whiten=True))
    assert "\n" not in str(err.value) and str(path) in str(err.value)


@pytest.mark.parametrize(
    ("pixels", "message"),
    [
        (np.full((20, 20), np.nan), "NaN or Inf"),
        (np.where(np.eye(20) > 0, np.inf, 1.0), "NaN or Inf"),
        (np.full((20, 20), 3.0), "constant"),
    ],
)
def test_bad_pixels_are_refused(tmp_path, pixels, message):
    np.save(tmp_path / "x.npy", pixels)
    with pytest.raises(SaeError, match=message):
        list(images.load([tmp_path / "x.npy"], whiten=False))


def test_a_v73_mat_stack_is_read_layer_by_layer_and_closed(tmp_path):
    """MATLAB v7.3 IMAGES.mat (HDF5, stored transposed): each layer as written; the file is closed after."""
    import gc

    import h5py

    stack = np.random.default_rng(0).random((20, 30, 3))
    path = tmp_path / "IMAGES.mat"
    with h5py.File(path, "w", userblock_size=512) as f:
        f["IMAGES"] = stack.T
    with open(path, "r+b") as f:  # the MAT header: text, then version 0x0200 and the byte order "IM"
        f.write(b"MATLAB 7.3 MAT-file".ljust(124, b" ") + b"\x00\x02IM")
    layers = list(images.read_file(path))
    assert [name for _, name in layers] == [f"{path}[{k}]" for k in range(3)]
    for k, (img, _) in enumerate(layers):
        np.testing.assert_array_equal(img, stack[:, :, k])
    assert not [o for o in gc.get_objects() if isinstance(o, h5py.File) and o.id.valid]
