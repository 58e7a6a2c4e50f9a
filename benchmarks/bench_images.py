"""The images stage on camera-sized photographs: time and peak RSS by thread count; prints a Markdown table.

    flock /tmp/bench.lock python benchmarks/bench_images.py             # about 2 minutes
    flock /tmp/bench.lock python benchmarks/bench_images.py --photographs 4 --repeats 1   # a smoke test

Makes 12-megapixel JPEGs (4000 x 3000, quality 90: a sample photograph enlarged, with noise, so
that each decodes like a camera's) in a temporary folder, then runs the rule's script
(`load_images.py`) on them with 1 thread and with as many as there are CPUs, alternating, at
full resolution and with `--shorter-side 512`. Reports the median wall time, photographs per
second, the speedup over one thread, the script's own peak RSS, and whether every thread
count wrote the same images (bit for bit).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workflow" / "scripts"))

import argparse
import os
import re
import subprocess
import tempfile
import time

import numpy as np
from common import ENV, SCRIPTS

from sae import h5io


def make_photographs(folder: Path, count: int) -> list[Path]:
    import skimage.data
    from PIL import Image

    rng = np.random.default_rng(0)
    base = np.asarray(Image.fromarray(skimage.data.astronaut()).resize((4000, 3000), Image.BICUBIC))
    paths = []
    for k in range(count):
        noisy = base + rng.integers(-20, 20, size=base.shape, dtype=np.int16)
        paths.append(folder / f"IMG_{k:04d}.JPG")
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(paths[-1], quality=90)
    return paths


def images_stage(listing: Path, out: Path, threads: int, shorter_side: int):
    """(seconds, peak RSS MB) of the rule's script."""
    cmd = [sys.executable, SCRIPTS / "load_images.py", "--threads", threads, "--shorter-side", shorter_side,
           "--files-from", listing, "--", out]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.run([str(c) for c in cmd], env=ENV, check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    return seconds, float(re.search(r"peak RSS (\d+) MB", proc.stdout).group(1))


def same_images(a: Path, b: Path) -> bool:
    with h5io.ImagesFile(a) as fa, h5io.ImagesFile(b) as fb:
        return fa.names == fb.names and all(np.array_equal(fa[k], fb[k]) for k in range(len(fa)))


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--photographs", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    threads = sorted({1, os.cpu_count() or 1})
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        photographs = make_photographs(folder, args.photographs)
        listing = folder / "list"
        listing.write_bytes(b"".join(bytes(p) + b"\0" for p in photographs))
        print(f"Machine: {os.cpu_count()} CPUs; {args.photographs} JPEGs of 4000 x 3000 "
              f"({sum(p.stat().st_size for p in photographs) / 2**20:.0f} MB); medians of {args.repeats} "
              "alternating runs.")  # fmt: skip
        print("\n| shorter_side | threads | seconds | photographs per second | speedup | peak RSS MB "
              "| images.h5 |")  # fmt: skip
        print("|---|---:|---:|---:|---:|---:|---|")
        for side in (512, 0):
            runs = {t: [] for t in threads}
            for _ in range(args.repeats):
                for t in threads:
                    runs[t].append(images_stage(listing, folder / f"{t}.h5", t, side))
            one = np.median([s for s, _ in runs[1]])
            for t in threads:
                seconds = np.median([s for s, _ in runs[t]])
                peak = max(p for _, p in runs[t])
                same = same_images(folder / "1.h5", folder / f"{t}.h5")
                print(f"| {side or 'full resolution'} | {t} | {seconds:.1f} "
                      f"| {args.photographs / seconds:.2f} | {one / seconds:.2f}x | {peak:.0f} "
                      f"| {'same bits as 1 thread' if same else 'DIFFERENT'} |")  # fmt: skip


if __name__ == "__main__":
    main()
