"""`python -m dalle_core.demo`: the same as `dalle-core demo` (either model)."""
import sys

from ..cli import main

if __name__ == "__main__":
    sys.exit(main(["demo", *sys.argv[1:]]))
