"""``python -m geoseg``."""

from geoseg.cli import main

# Guarded: worker processes started with spawn/forkserver import the main module again.
if __name__ == "__main__":
    main()
