"""The Dask client a distributed run uses: an existing scheduler, the active client, or a
LocalCluster started (and closed) for the run."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["dask_client"]


@contextmanager
def dask_client(scheduler: str | None = None, n_workers: int | None = None) -> Iterator[object]:
    """Yield a ``distributed.Client`` for the duration of a run.

    Parameters
    ----------
    scheduler
        Address of a running scheduler (``"tcp://10.0.0.5:8786"``); the client connects to it
        and disconnects afterwards, leaving the cluster running.
    n_workers
        Worker processes of the LocalCluster started when no scheduler is given and no
        client is active (default: Dask's choice, one per core).
    """
    try:
        import distributed
    except ImportError as error:
        raise ImportError("distributed runs need Dask: pip install 'hierps[dask]'") from error
    if scheduler is not None:
        with distributed.Client(scheduler) as client:
            yield client
        return
    try:
        yield distributed.get_client()  # an active client: the caller's cluster
        return
    except ValueError:
        pass
    with (
        distributed.LocalCluster(
            n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client
