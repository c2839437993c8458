"""The dask client of a batch: a local cluster by default, or a running scheduler by address.

As with :class:`distributed.Client`, ``address=None`` starts a local cluster
and a string connects to that scheduler; everything after that is the same
code path.  The local cluster runs worker processes with one task thread
each: one worker per visible GPU (pinned with ``CUDA_VISIBLE_DEVICES``), or
on CPU-only machines one worker per core with one torch thread each, as far
as memory allows (:data:`MEMORY_PER_WORKER`).  Separate processes scale better
than torch's threads inside one process (``benchmarks/bench_batch.py``: two
one-thread workers ran the regions of a 2-core machine 1.46x faster than
one two-thread worker).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from distributed.diagnostics.plugin import WorkerPlugin

from geoseg.errors import ConfigError

if TYPE_CHECKING:
    from distributed import Client

__all__ = [
    "ClusterInfo",
    "GeosegWorkerSetup",
    "LocalLayout",
    "local_layout",
    "open_client",
    "visible_gpus",
]

log = logging.getLogger(__name__)

#: Memory a CPU worker is budgeted by default (model, tile batches, blend buffers,
#: strip writer): the default worker count never exceeds memory / this.
MEMORY_PER_WORKER = 2 * 1024**3


@dataclass(frozen=True)
class LocalLayout:
    """How a local cluster is cut: worker processes, torch threads each, GPU per worker."""

    n_workers: int
    torch_threads: int
    gpus: tuple[str, ...] = ()


def local_layout(
    workers: int | None,
    *,
    cores: int,
    gpus: Sequence[str] = (),
    memory: int | None = None,
) -> LocalLayout:
    """Choose worker processes and torch threads for a local cluster.

    Parameters
    ----------
    workers : int, optional
        Requested worker processes; capped at the GPUs (one worker each) or
        at the cores.  Default: one per GPU, else one per core but no more
        than ``memory // MEMORY_PER_WORKER`` (at least 1).
    cores : int
        CPU cores of the machine.
    gpus : sequence of str
        ``CUDA_VISIBLE_DEVICES`` entries of the usable GPUs.
    memory : int, optional
        Memory of the machine in bytes (default: no limit on the worker count).

    Returns
    -------
    LocalLayout
        The cores are split evenly between the workers' torch threads.

    Raises
    ------
    ConfigError
        If ``workers`` is not positive.

    Examples
    --------
    >>> local_layout(None, cores=16, memory=16 * 1024**3)
    LocalLayout(n_workers=8, torch_threads=2, gpus=())
    >>> local_layout(1, cores=2)
    LocalLayout(n_workers=1, torch_threads=2, gpus=())
    >>> local_layout(None, cores=16, gpus=["0", "1"])
    LocalLayout(n_workers=2, torch_threads=8, gpus=('0', '1'))
    """
    if workers is not None and workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}", field="workers")
    cores = max(1, cores)
    if gpus:
        n = min(workers or len(gpus), len(gpus))
        return LocalLayout(n, max(1, cores // n), tuple(gpus[:n]))
    default = cores if memory is None else max(1, min(cores, memory // MEMORY_PER_WORKER))
    n = min(workers or default, cores)
    return LocalLayout(n, max(1, cores // n))


def visible_gpus(device: str) -> tuple[str, ...]:
    """``CUDA_VISIBLE_DEVICES`` entries of the GPUs a local cluster should use for ``device``.

    Empty for ``cpu``/``mps`` and on machines without CUDA; one entry for ``cuda:N``.
    """
    name = (device or "auto").lower()
    if not (name == "auto" or name.startswith("cuda")):
        return ()
    import torch

    if not torch.cuda.is_available():
        return ()
    n = torch.cuda.device_count()
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [s.strip() for s in env.split(",") if s.strip()][:n] if env else []
    ids = ids or [str(i) for i in range(n)]
    if name.startswith("cuda:"):
        index = int(name.split(":", 1)[1])
        if not 0 <= index < len(ids):
            raise ConfigError(f"device={device!r}: only {len(ids)} CUDA device(s) present")
        return (ids[index],)
    return tuple(ids)


@dataclass(frozen=True)
class ClusterInfo:
    """Where a batch runs.

    ``dashboard`` is the dask dashboard URL (None when ``bokeh`` is not
    installed); ``torch_threads`` and ``gpus`` are known for local clusters only.
    """

    address: str
    dashboard: str | None
    local: bool
    workers: int
    torch_threads: int | None = None
    gpus: tuple[str, ...] = ()


class GeosegWorkerSetup(WorkerPlugin):
    """Process settings of a geoseg worker: bounded malloc, and torch threads when known."""

    name = "geoseg-setup"

    def __init__(self, torch_threads: int | None = None) -> None:
        self.torch_threads = torch_threads

    def setup(self, worker: Any) -> None:
        from geoseg.runtime import bound_malloc

        bound_malloc()
        if self.torch_threads:
            import torch

            torch.set_num_threads(self.torch_threads)


def _local_cluster(layout: LocalLayout, dashboard_address: str | None) -> Any:
    from distributed import LocalCluster, Nanny, Scheduler, SpecCluster
    from distributed.system import MEMORY_LIMIT

    threads = str(layout.torch_threads)
    env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    if not layout.gpus:
        return LocalCluster(
            n_workers=layout.n_workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=dashboard_address,
            env=env,
        )
    # LocalCluster gives every worker the same environment; a GPU each needs a spec per worker.
    workers = {
        f"gpu{gpu}": {
            "cls": Nanny,
            "options": {
                "nthreads": 1,
                "env": {**env, "CUDA_VISIBLE_DEVICES": gpu},
                "memory_limit": MEMORY_LIMIT // len(layout.gpus),
                "host": "127.0.0.1",
            },
        }
        for gpu in layout.gpus
    }
    scheduler = {
        "cls": Scheduler,
        "options": {"host": "127.0.0.1", "dashboard_address": dashboard_address},
    }
    return SpecCluster(workers=workers, scheduler=scheduler, name="geoseg")


def _dashboard(client: Client, local: bool) -> str | None:
    # A local scheduler serves no dashboard without bokeh; a remote one may have it.
    if local and importlib.util.find_spec("bokeh") is None:
        return None
    link = client.dashboard_link
    return str(link) if link else None


@contextlib.contextmanager
def open_client(
    address: str | None = None,
    *,
    workers: int | None = None,
    device: str = "auto",
    dashboard_address: str | None = ":8787",
    timeout: float = 60.0,
) -> Iterator[tuple[Client, ClusterInfo]]:
    """Connect a dask client: a new local cluster (``address=None``) or a running scheduler.

    Parameters
    ----------
    address : str, optional
        Scheduler address, e.g. ``tcp://host:8786``; None starts a local
        cluster (see :func:`local_layout`) that is shut down on exit.
    workers : int, optional
        Worker processes of the local cluster.
    device : str
        The prediction device; GPUs are given to local workers unless it is
        ``cpu`` or ``mps``.
    dashboard_address : str, optional
        Where the local cluster serves its dashboard (None: no dashboard).
    timeout : float
        Seconds to wait for the scheduler and for at least one worker.

    Yields
    ------
    (distributed.Client, ClusterInfo)

    Raises
    ------
    ConfigError
        ``workers`` given with ``address``; the scheduler is unreachable, has
        no workers, or its workers cannot import this version of geoseg.
    """
    from distributed import Client

    from geoseg import __version__
    from geoseg.batch.worker import worker_versions

    if address is not None and workers is not None:
        raise ConfigError(
            "workers sizes the local cluster; the workers of the scheduler at "
            f"{address} are started with it (e.g. dask worker {address} --nworkers N --nthreads 1)",
            field="workers",
        )
    with contextlib.ExitStack() as stack:
        layout: LocalLayout | None = None
        if address is None:
            from distributed.system import MEMORY_LIMIT

            layout = local_layout(
                workers,
                cores=os.cpu_count() or 1,
                gpus=visible_gpus(device),
                memory=MEMORY_LIMIT,
            )
            cluster = stack.enter_context(_local_cluster(layout, dashboard_address))
            client = stack.enter_context(Client(cluster))
        else:
            try:
                client = stack.enter_context(Client(address, timeout=timeout))
            except (OSError, TimeoutError) as exc:
                raise ConfigError(
                    f"cannot reach the dask scheduler at {address} ({exc}); check --scheduler "
                    "and that 'dask scheduler' runs there"
                ) from exc
        try:
            client.wait_for_workers(layout.n_workers if layout else 1, timeout=timeout)
        except TimeoutError as exc:
            raise ConfigError(
                f"the dask scheduler at {client.scheduler.address} has no worker after "
                f"{timeout:.0f} s; start some with 'dask worker {client.scheduler.address}'"
            ) from exc
        try:
            versions = client.run(worker_versions)
        except Exception as exc:  # whatever the worker raised, re-raised here
            raise ConfigError(
                f"the dask workers cannot run geoseg ({type(exc).__name__}: {exc}); install "
                f"geoseg {__version__} in the workers' environment"
            ) from exc
        other = sorted({v["geoseg"] for v in versions.values()} - {__version__})
        if other:
            raise ConfigError(
                f"dask workers run geoseg {', '.join(other)} but this client runs {__version__}; "
                "install the same version everywhere"
            )
        client.register_plugin(GeosegWorkerSetup(layout.torch_threads if layout else None))
        info = ClusterInfo(
            address=str(client.scheduler.address),
            dashboard=_dashboard(client, address is None),
            local=address is None,
            workers=len(versions),
            torch_threads=layout.torch_threads if layout else None,
            gpus=layout.gpus if layout else (),
        )
        log.info("dask cluster %s with %d worker(s)", info.address, info.workers)
        yield client, info
