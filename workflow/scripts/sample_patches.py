"""Rule patches: sample and normalize patches from images.h5 into patches.h5."""

import argparse

from sae import cli, h5io, patches


def body():
    # This script's interface, spelled out here on purpose (see sae.cli): no shared parser.
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("images", help="images.h5 to read")
    parser.add_argument("out", help="patches.h5 to write")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--side", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    args = parser.parse_args()
    imgs, names, digests = h5io.read_images(args.images)
    data = patches.sample(imgs, args.count, args.side, args.seed)
    sigma = patches.normalize(data)
    attrs = {
        "seed": args.seed,
        "side": args.side,
        "count": args.count,
        "sigma": sigma,
        "sources": names,
        "sha256": digests,
    }
    h5io.write_patches(args.out, data, attrs)
    print(f"wrote {args.count} patches of {args.side}x{args.side} to {args.out} (sigma {sigma:.4g})")


cli.main(body)
