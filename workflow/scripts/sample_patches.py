"""Rule patches: sample and normalize patches from images.h5 into patches.h5, piece by piece."""

import argparse
import logging
import time

from sae import cli, h5io, patches

log = logging.getLogger("sae.patches")
PROGRESS_SECONDS = 5.0  # between progress lines (10^8 patches take minutes)


def body():
    # This script's interface, spelled out here on purpose (see sae.cli): no shared parser.
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("images", help="images.h5 to read")
    parser.add_argument("out", help="patches.h5 to write")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--side", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    args = parser.parse_args()

    def progress(stage):
        """A callback logging '<stage>: k of count patches' at most every PROGRESS_SECONDS, and at the end."""
        logged = time.monotonic()

        def done(k):
            nonlocal logged
            if k == args.count or time.monotonic() - logged >= PROGRESS_SECONDS:
                log.info("%s: %s of %s patches", stage, f"{k:,}", f"{args.count:,}")
                logged = time.monotonic()

        return done

    with h5io.ImagesFile(args.images) as imgs:
        sigma = patches.sigma(imgs, args.count, args.side, args.seed, progress("pass 1, sigma"))
        attrs = {
            "seed": args.seed,
            "side": args.side,
            "count": args.count,
            "sigma": sigma,
            "sources": imgs.names,
            "sha256": imgs.digests,
        }
        written = progress("pass 2, written")
        pieces = patches.pieces(imgs, args.count, args.side, args.seed, sigma, progress=written)
        h5io.write_patches(args.out, args.count, args.side**2, pieces, attrs)
    print(
        f"wrote {args.count} patches of {args.side}x{args.side} to {args.out} (sigma {sigma:.4g});"
        f" peak RSS {cli.peak_rss_mb():.0f} MB"
    )


cli.main(body)
