"""A worker plugin for the fault tests: kill the worker in the middle of one region, once."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin


class KillDuringRegion(WorkerPlugin):
    """The first attempt of ``region`` ends with ``os._exit`` after its first batch of tiles.

    ``marker`` (created exclusively) makes it happen once across all workers,
    including the replacement the nanny starts.
    """

    name = "kill-during-region"

    def __init__(self, region: str, marker: str) -> None:
        self.region = region
        self.marker = marker
        self._original: Any = None

    def setup(self, worker: Any) -> None:
        import geoseg.batch.worker as module

        original = module.run_scene
        region, marker = self.region, self.marker

        def run_scene(src: Any, dst: Any, model: Any, config: Any = None, progress: Any = None):
            if Path(dst).stem == region:
                try:
                    os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                except FileExistsError:
                    pass
                else:

                    def die(done: int, total: int) -> None:
                        os._exit(1)

                    return original(src, dst, model, config, die)
            return original(src, dst, model, config, progress)

        self._original = original
        module.run_scene = run_scene

    def teardown(self, worker: Any) -> None:
        import geoseg.batch.worker as module

        if self._original is not None:
            module.run_scene = self._original


class RegisterBlobs(WorkerPlugin):
    """Registers the test detector ``blobs`` (tests/instance_detector.py) on every worker."""

    name = "register-blobs"

    def setup(self, worker: Any) -> None:
        from tests.instance_detector import register_blobs

        register_blobs()
