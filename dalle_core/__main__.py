"""`python -m dalle_core ...` runs the `dalle-core` command."""
import sys

from .cli import main

sys.exit(main())
