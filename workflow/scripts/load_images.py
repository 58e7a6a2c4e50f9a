"""Rule images: load, check and whiten the source images into images.h5, --threads at a time."""

import sae.one_blas_thread  # noqa: F401  (first: one BLAS thread, set before numpy loads)

# isort: split
import argparse
import logging
import os

from sae import cli, h5io, images

log = logging.getLogger("sae.images")  # progress, time-stamped (the last line, on stdout, is parsed)


def body():
    # This script's interface, spelled out here on purpose (see sae.cli): no shared parser.
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", help="images.h5 to write")
    parser.add_argument(
        "--files-from", metavar="LIST", help="image files, each ended by a NUL byte; none: the samples"
    )
    parser.add_argument("--no-whiten", dest="whiten", action="store_false", help="already whitened")
    parser.add_argument(
        "--shorter-side", type=int, default=0, metavar="PIXELS",
        help="downscale larger images to this shorter side; 0 (default): full resolution",
    )  # fmt: skip
    parser.add_argument(
        "--threads", type=int, default=1, metavar="N",
        help="images prepared side by side (default 1; at most the CPU count)",
    )  # fmt: skip
    args = parser.parse_args()
    source = (cli.nul_separated(args.files_from) if args.files_from else []) or "sample"

    def logged(loaded):
        for k, (img, name, digest) in enumerate(loaded, start=1):
            log.info("image %d: %s: %d x %d", k, name, *img.shape)
            yield img, name, digest

    log.info("source: %s", "the ten sample photographs" if source == "sample" else f"{len(source)} files")

    threads = min(args.threads, os.cpu_count() or 1)  # more would only hold more images in memory
    capped = (
        f" ({args.threads} granted, capped at this machine's CPU count)" if threads < args.threads else ""
    )
    log.info("threads: %d%s; images prepared side by side, written in the order listed", threads, capped)
    if args.shorter_side:
        log.info("downscaling images whose shorter side is over %d pixels to that size", args.shorter_side)
    loaded = images.load(source, args.whiten, args.shorter_side or None, workers=threads)
    count = h5io.write_images(args.out, logged(loaded), args.whiten, images.VARIANCE)
    peak = cli.peak_rss_mb()
    print(f"wrote {count} images to {args.out} (whitened: {args.whiten}); peak RSS {peak:.0f} MB")


cli.main(body)
