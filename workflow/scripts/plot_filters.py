"""Rule filters: draw each hidden unit's weights as a tile of filters.png."""

import argparse

from sae import cli, filters, h5io


def body():
    # This script's interface, spelled out here on purpose (see sae.cli): no shared parser.
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model", help="model.h5 to read")
    parser.add_argument("out", help="PNG to write")
    args = parser.parse_args()
    params, attrs = h5io.read_model(args.model)
    pixels = filters.save(params["W1"], int(attrs["side"]), args.out)
    print(f"wrote {args.out}: {len(params['W1'])} filters, {pixels.shape[1]} x {pixels.shape[0]} px")


cli.main(body)
