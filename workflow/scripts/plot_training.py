"""Rule training_curve: draw cost and gradient norm per iteration from model.h5's history."""

import argparse

from sae import cli, curve, h5io


def body():
    # This script's interface, spelled out here on purpose (see sae.cli): no shared parser.
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model", help="model.h5 to read")
    parser.add_argument("out", help="PNG to write")
    args = parser.parse_args()
    history, attrs = h5io.read_history(args.model)
    s = curve.summary(history, attrs)
    curve.plot(history, s, args.out)
    print(f"wrote {args.out}: {curve.describe(s)}")


cli.main(body)
