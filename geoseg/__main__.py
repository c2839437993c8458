"""``python -m geoseg``."""

from geoseg.cli import main

main()
