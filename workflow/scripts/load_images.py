"""Rule images: load, check and whiten the source images into images.h5."""

import argparse

from sae import cli, h5io, images


def body():
    # This script's interface, spelled out here on purpose (see sae.cli): no shared parser.
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", help="images.h5 to write")
    parser.add_argument("files", nargs="*", help="image files; none means the sample photographs")
    parser.add_argument("--no-whiten", dest="whiten", action="store_false", help="already whitened")
    args = parser.parse_args()
    source = args.files or "sample"
    imgs, names, digests = images.load(source, args.whiten)
    h5io.write_images(args.out, imgs, names, digests, args.whiten, images.VARIANCE)
    for img, name in zip(imgs, names, strict=True):
        print(f"{name}: {img.shape[0]} x {img.shape[1]}")
    print(f"wrote {len(imgs)} images to {args.out} (whitened: {args.whiten})")


cli.main(body)
