"""Build parity fixtures from the reference implementation, dalle-pytorch 1.6.6.

Run with the Python of the venv that `bash ../shared/peer/setup_peer.sh DIR` builds:

    DIR/bin/python tests/reference/make_fixtures.py tests/fixtures            # the committed fixtures
    DIR/bin/python tests/reference/make_fixtures.py /tmp/live --seed 7        # fresh weights, for live tests

Each case is one `.pt` file holding only tensors and plain containers (loadable with
`torch.load(weights_only=True)`): the reference's constructor keywords, its state dict, the inputs and the
outputs it computed. `tests/test_parity.py` rebuilds the same model in dalle_core and compares.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

CASE_MODULES = ["cases_vae", "cases_dalle", "cases_clip"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", default="", help="build only cases whose name starts with this prefix")
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # deterministic reductions
    for mod_name in CASE_MODULES:
        try:
            module = importlib.import_module(mod_name)
        except ModuleNotFoundError as err:
            if err.name == mod_name:
                continue
            raise
        for name, case in module.build_cases(args.seed):
            if not name.startswith(args.only):
                continue
            torch.save(case, args.out_dir / f"{name}.pt")
            print("wrote", args.out_dir / f"{name}.pt")


if __name__ == "__main__":
    main()
