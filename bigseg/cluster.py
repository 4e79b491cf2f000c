"""Where graphs run: threads, a local cluster of processes, or an existing scheduler."""

from __future__ import annotations

import contextlib
import logging

log = logging.getLogger("bigseg")


class Runner:
    """Evaluates lists of dask objects on the chosen scheduler, with optional progress."""

    def __init__(self, client=None, quiet: bool = False):
        self.client = client
        self.quiet = quiet

    def compute(self, objs, label: str = ""):
        import dask

        objs = list(objs)
        if not objs:
            return []
        if self.client is not None:
            futures = self.client.compute(objs)
            if not self.quiet and label:
                from distributed import progress

                log.info("%s", label)
                progress(futures)
            return self.client.gather(futures)
        if not self.quiet and label:
            from dask.diagnostics import ProgressBar

            log.info("%s", label)
            with ProgressBar(minimum=1.0):
                return list(dask.compute(*objs, scheduler="threads"))
        return list(dask.compute(*objs, scheduler="threads"))

    @property
    def description(self) -> str:
        if self.client is None:
            return "threads"
        return f"distributed ({self.client.scheduler.address})"


@contextlib.contextmanager
def runner(workers: int | None = None, scheduler: str | None = None, quiet: bool = False):
    """Context manager yielding a :class:`Runner`.

    ``scheduler`` connects to a running ``dask scheduler``; ``workers`` starts a
    local cluster of that many single-threaded worker processes; neither uses
    threads in this process.
    """
    if workers and scheduler:
        raise ValueError("give --workers or --scheduler, not both")
    if scheduler:
        from distributed import Client

        with Client(scheduler, timeout="30s") as client:
            log.info("connected to %s (dashboard %s)", scheduler, client.dashboard_link)
            yield Runner(client, quiet)
    elif workers:
        from distributed import Client, LocalCluster

        with LocalCluster(n_workers=int(workers), threads_per_worker=1, processes=True,
                          dashboard_address=None, silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
            yield Runner(client, quiet)
    else:
        yield Runner(None, quiet)
