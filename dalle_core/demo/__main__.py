"""`python -m dalle_core.demo`: the same as `dalle-core demo`."""
from .runner import main

if __name__ == "__main__":
    main()
