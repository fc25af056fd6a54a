"""Time SynthFaces generation (factor sampling + rendering) and check byte-identical output.

    python benchmarks/synthfaces_speed.py --n 30000 --size 64
"""
from __future__ import annotations

import argparse
import hashlib
import time

from facefactors.data import synthfaces


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=30000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    times, digests = [], set()
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        ds = synthfaces.generate(synthfaces.SynthFacesConfig(n=args.n, size=args.size))
        times.append(time.perf_counter() - t0)
        digests.add(hashlib.sha256(ds.images.numpy().tobytes()).hexdigest()[:16])
    print(f"SynthFaces {args.n} x {args.size}px: best {min(times):.1f} s, median {sorted(times)[len(times) // 2]:.1f} s "
          f"over {args.repeats} runs ({args.n / min(times):.0f} images/s); identical output: {len(digests) == 1}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
