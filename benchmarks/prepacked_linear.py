"""`F.linear` against oneDNN on a prepacked weight (`dalle_core.ops.linear`), at the shape of one decoding step.

    python benchmarks/prepacked_linear.py [--threads 1 2] [--rows 4] [--shape 2048 256]

Prints the median time of each over `torch.utils.benchmark`'s blocked autorange (2 s per measurement).
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch.utils import benchmark

from dalle_core.ops.linear import pack_weight, packed_linear


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rows", type=int, default=4, help="rows of the input (the sampling batch)")
    parser.add_argument("--shape", type=int, nargs=2, default=[2048, 256], metavar=("OUT", "IN"))
    args = parser.parse_args()
    out_features, in_features = args.shape
    w, b, x = torch.randn(out_features, in_features), torch.randn(out_features), torch.randn(args.rows, in_features)
    packed = pack_weight(w, args.rows)
    if packed is None:
        raise SystemExit("this torch build cannot prepack weights for oneDNN")
    with torch.inference_mode():
        for threads in args.threads:
            torch.set_num_threads(threads)
            for name, fn in (("F.linear", lambda: F.linear(x, w, b)),
                             ("prepacked", lambda: packed_linear(x, w, b, packed))):
                t = benchmark.Timer("fn()", globals={"fn": fn}).blocked_autorange(min_run_time=2)
                print(f"{threads} thread(s), {args.rows}x{in_features} @ {in_features}x{out_features}: "
                      f"{name:<9} {t.median * 1e6:7.1f} us")


if __name__ == "__main__":
    main()
