"""The ``geoseg`` command line: thin wrappers that parse, configure and call the library."""

from geoseg.cli.main import cli, main

__all__ = ["cli", "main"]
