"""Where graphs run: threads, a local cluster of processes, an existing scheduler, or SLURM jobs."""

from __future__ import annotations

import contextlib
import logging
import shutil

log = logging.getLogger("bigseg")

#: share of a worker thread's memory its chunk may take (``chunk_memory: auto``); the rest is the process's
#: libraries (about 450 MiB), results waiting to be stored and the other stages' blocks
CHUNK_MEMORY_SHARE = 0.25

#: how long ``--scheduler`` waits for the scheduler before saying it cannot be reached
SCHEDULER_TIMEOUT = "10s"


def threaded_get(dsk, keys, **kwargs):
    """dask's threaded scheduler, handed over as a function: asked for by name, dask imports distributed
    to look for a client first (0.14 s and pandas in every run on this machine's threads)."""
    from dask.threaded import get

    return get(dsk, keys, **kwargs)


class ClusterError(RuntimeError):
    """The workers cannot be had (no sbatch, scheduler unreachable); the message says what to do."""


def progress_bar(label: str, total: int, unit: str = "image", delay: float = 0.0):
    """A tqdm bar on stderr, ``label: 40%|████  | 6/15 [00:12<00:18, 0.5image/s]``; stdout stays for results."""
    import sys

    from tqdm import tqdm

    # a log file (SLURM, nohup) gets a line every half minute, not ten a second
    interactive = sys.stderr.isatty()
    return tqdm(total=total, desc=label, unit=unit, file=sys.stderr, delay=delay, dynamic_ncols=interactive,
                mininterval=0.1 if interactive else 30.0)


#: a compute whose graph has this many tasks per object or more shows its tasks on the bar (a large image's tiles)
TASKS_PER_OBJECT_SHOWN = 16


def _task_note(bar, n_objects: int):
    """``on_tasks(done, total)`` for :meth:`Runner._evaluate`: the finished tasks in the bar's postfix, at most a
    hundred redraws a compute, and only for graphs of many tasks an object (a few images of many tiles)."""
    def note(done, total):
        if total >= TASKS_PER_OBJECT_SHOWN * n_objects and done % max(1, total // 100) == 0:
            bar.set_postfix_str(f"{done}/{total} tasks", refresh=True)
    return note


class StepBar:
    """A bar over a long step of parts (:meth:`Runner.progress` with ``counted``): first ``counted`` computed
    objects, then steps marked done one by one.

    :meth:`update` is what :meth:`Runner.compute` calls for each finished
    object: it counts up to ``counted`` and no further, so the computations
    of the later steps (a fit's streamed passes, its boundary windows) never
    push the bar to its total while a step is left. The postfix says what runs.
    """

    def __init__(self, bar, counted: int, note: str = "", after: str = ""):
        self.bar, self.counted, self.seen, self.after = bar, int(counted), 0, after
        self.note(note)

    def update(self, n: int = 1) -> None:
        k = min(int(n), self.counted - self.seen)
        if k > 0:
            self.seen += k
            self.bar.update(k)
            if self.seen == self.counted and self.after:
                self.note(self.after)

    def step(self, note: str = "") -> None:
        """Mark one step done (and the counted part, whatever it counted); ``note`` says what runs next."""
        self.update(self.counted - self.seen)
        self.bar.update(1)
        self.note(note)

    def note(self, text: str) -> None:
        self.bar.set_postfix_str(text, refresh=True)

    def finish(self) -> None:
        """Every step done: the bar at its total."""
        self.update(self.counted - self.seen)
        self.note("")
        self.bar.update(self.bar.total - self.bar.n)

    def close(self) -> None:
        self.bar.close()


class Runner:
    """Evaluates lists of dask objects on the chosen scheduler, with optional progress."""

    def __init__(self, client=None, quiet: bool = False):
        self.client = client
        self.quiet = quiet
        self._stage_bar = None      # the bar of the stage compute_batches is running, if any

    def compute(self, objs, label: str = ""):
        """The computed ``objs``, in order; a labelled call shows a progress bar on stderr unless ``quiet``.

        Inside :meth:`compute_batches` the stage's one bar counts each finished object instead.
        """
        objs = list(objs)
        if not objs:
            return []
        bar = own = None
        if self._stage_bar is not None:
            bar = self._stage_bar
        elif label and not self.quiet:
            # a second or less of work needs no bar (as dask's ProgressBar(minimum=1.0) had it)
            bar = own = progress_bar(label, len(objs), unit="part", delay=1.0)
        # a bar counting objects stands still while one large image's many tiles compute: its tasks show too
        tasks = None if bar is None or isinstance(bar, StepBar) else _task_note(bar, len(objs))
        try:
            return self._evaluate(objs, bar.update if bar is not None else None, tasks)
        finally:
            if own is not None:
                own.close()

    def _evaluate(self, objs, on_done, on_tasks=None):
        """Compute ``objs``; ``on_done()`` once per object as it finishes (at the end where not traceable);
        ``on_tasks(done, total)`` as the tasks of the graph finish (threads only)."""
        import dask

        if self.client is not None:
            futures = self.client.compute(objs)
            if on_done is not None:
                from distributed import as_completed

                for future in as_completed(futures):
                    if future.status == "error":
                        break       # gather raises it now, not after the rest of the batch
                    on_done()
            return self.client.gather(futures)
        if on_done is None:
            return list(dask.compute(*objs, scheduler=threaded_get))
        from dask.callbacks import Callback
        from dask.core import flatten

        owner, left = {}, []
        for i, obj in enumerate(objs):
            keys = set(flatten(obj.__dask_keys__())) if dask.is_dask_collection(obj) else set()
            owner.update(dict.fromkeys(keys, i))
            left.append(len(keys))

        tasks = [0, 0]

        class Finished(Callback):
            def _start_state(self, dsk, state):
                tasks[1] = len(dsk)

            # the threaded scheduler calls this from its own loop, one finished task at a time
            def _posttask(self, key, result, dsk, state, worker_id):
                tasks[0] += 1
                if on_tasks is not None:
                    on_tasks(*tasks)
                i = owner.pop(key, None)
                if i is not None:
                    left[i] -= 1
                    if left[i] == 0:
                        on_done()

        with Finished():
            results = list(dask.compute(*objs, scheduler=threaded_get))
        # an array's output keys are renamed by graph optimisation: such objects count when all are done
        for n in left:
            if n:
                on_done()
        return results

    @property
    def batch_images(self) -> int:
        """Images per graph: enough to keep every worker thread busy, few enough that graphs stay small.

        A stage over an archive builds and computes its graph this many images
        at a time, so neither the task graph nor the scheduler's bookkeeping
        grows with the collection.
        """
        import os

        if self.client is not None:
            threads = sum(self.client.nthreads().values()) or 1
        else:
            threads = os.cpu_count() or 1
        return max(16, 4 * threads)

    def memory_per_thread(self) -> int | None:
        """Bytes of memory each worker thread may count on (the least over workers), or None if unknown."""
        import os

        if self.client is not None:
            workers = self.client.scheduler_info().get("workers", {}).values()
            shares = [w["memory_limit"] / max(w.get("nthreads", 1), 1) for w in workers if w.get("memory_limit")]
            return int(min(shares)) if shares else None
        import dask

        threads = dask.config.get("num_workers", None) or os.cpu_count() or 1
        limit = memory_limit()
        return int(limit / threads) if limit else None

    def resolve(self, settings: dict) -> dict:
        """``settings`` with ``chunk_memory: auto`` made a number of bytes for the workers at hand."""
        if settings.get("chunk_memory") != "auto":
            return settings
        share = self.memory_per_thread()
        return dict(settings, chunk_memory=int(share * CHUNK_MEMORY_SHARE)) if share else settings

    def compute_batches(self, items, build, label: str = "", on_error=None):
        """``build(item)`` (a dask object, or None to leave the item out) computed ``batch_images`` at a time.

        Returns the results of every built item, in order. With ``on_error``, an
        item whose computation fails costs only itself: after a failed batch each
        of its items is built again and computed alone (``build`` returns None for
        those that finished before the failure), and ``on_error(item, exc)`` is
        told of each one that still fails; without it the exception propagates.

        With a ``label`` and not ``quiet``, one bar on stderr counts the items
        of the whole stage (all batches) as they finish, with an ETA.
        """
        items = list(items)
        results = []
        n = self.batch_images
        failed = 0
        with self.progress(label, len(items)) as bar:
            count = bar.update if bar is not None else (lambda k=1: None)
            for start in range(0, len(items), n):
                built = [(item, build(item)) for item in items[start:start + n]]
                todo = [(item, obj) for item, obj in built if obj is not None]
                count(len(built) - len(todo))     # done before (a resumed run) or left to the caller
                before = bar.n if bar is not None else 0
                try:
                    results += self.compute([obj for _, obj in todo], label if todo else "")
                    if bar is not None:
                        bar.set_postfix_str(f"{failed} failed" if failed else "", refresh=False)
                except Exception:
                    if on_error is None:
                        raise
                    if bar is not None:
                        bar.n = before            # some of the batch finished: counted again item by item
                    for item, _ in todo:
                        again = build(item)
                        if again is None:
                            count()
                            continue
                        try:
                            results += self.compute([again])
                        except Exception as exc:
                            on_error(item, exc)
                            failed += 1
                            count()
                            if bar is not None:
                                bar.set_postfix_str(f"{failed} failed", refresh=False)
        return results

    @contextlib.contextmanager
    def progress(self, label: str, total: int, unit: str = "image", counted: int | None = None, note: str = "",
                 after: str = ""):
        """One bar for a stage or a long step: each :meth:`compute` inside counts its finished objects on it.

        Yields the tqdm bar, or None when ``quiet``, unlabelled or empty. A large
        image's bands, say: ``with runner.progress(f"segment {id}", n_bands, "band"):``.

        With ``counted``, the bar is a :class:`StepBar`: the objects computed
        inside count only up to ``counted`` (a fit's sampled images), and the
        other ``total - counted`` units are steps the caller marks done with
        :meth:`StepBar.step`, so the bar reaches its total only when the last
        step is done, however many objects the steps compute. ``note`` says
        what runs first, ``after`` what runs once the counted part is done.
        """
        bar = progress_bar(label, total, unit) if label and total and not self.quiet else None
        if bar is not None and counted is not None:
            bar = StepBar(bar, counted, note, after)
        outer, self._stage_bar = self._stage_bar, bar
        try:
            yield bar
        finally:
            self._stage_bar = outer
            if bar is not None:
                bar.close()

    @property
    def description(self) -> str:
        if self.client is None:
            return "threads"
        return f"distributed ({self.client.scheduler.address})"


def memory_limit() -> int | None:
    """This machine's memory, or its cgroup's limit where lower (what ``distributed.system.MEMORY_LIMIT``
    reads, without importing distributed, which cost every threaded run 0.14 s and pandas)."""
    import os

    limits = []
    try:
        limits.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        pass
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as fh:
                text = fh.read().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) > 0:
            limits.append(int(text))
    return min(limits) if limits else None


def slurm_cluster(spec: dict):
    """A dask-jobqueue ``SLURMCluster`` from a validated ``cluster`` setting; no job is submitted yet.

    ``cluster.job_script()`` shows the batch script each of the ``jobs`` will run.
    """
    import dask

    try:
        from dask_jobqueue import SLURMCluster
    except ImportError:
        raise ClusterError("the cluster setting needs dask-jobqueue: pip install 'bigseg[cluster]'") from None
    kwargs = {k: v for k, v in spec.items() if k not in ("type", "jobs")}
    kwargs.setdefault("job_name", "bigseg")
    # dask-jobqueue starts workers with this interpreter's path (unless its own config names one); a prologue
    # (``source venv/bin/activate``, ``module load``) is there to choose the compute nodes' Python, so take
    # the one on PATH after it ran
    if spec.get("job_script_prologue") and dask.config.get("jobqueue.slurm.python", None) is None:
        kwargs.setdefault("python", "python3")
    return SLURMCluster(**kwargs)


@contextlib.contextmanager
def runner(workers: int | None = None, scheduler: str | None = None, quiet: bool = False,
           cluster: dict | None = None, timeout: str | float = SCHEDULER_TIMEOUT):
    """Context manager yielding a :class:`Runner`.

    ``scheduler`` connects to a running ``dask scheduler``; ``workers`` starts a
    local cluster of that many single-threaded worker processes; ``cluster`` (the
    validated ``cluster`` setting) submits that many SLURM jobs of dask workers.
    With none of them graphs run on threads in this process. ``workers`` and
    ``scheduler`` win over ``cluster``, so one config serves laptop and cluster.

    Raises :class:`ClusterError` when the scheduler does not answer within
    ``timeout`` or, for ``cluster``, when there is no ``sbatch`` to submit with.
    """
    if workers and scheduler:
        raise ValueError("give --workers or --scheduler, not both")
    if scheduler:
        from distributed import Client

        try:
            client = Client(scheduler, timeout=timeout)
        except (OSError, TimeoutError, ValueError) as exc:     # refused, unresolvable, no such scheme
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ClusterError(f"cannot reach the dask scheduler at {scheduler}: {reason}; "
                               "start one with 'dask scheduler' or check the address") from exc
        # only the connection is guarded: errors of the work itself pass through unchanged
        with client:
            log.info("connected to %s (dashboard %s)", scheduler, client.dashboard_link)
            yield Runner(client, quiet)
    elif workers:
        from distributed import Client, LocalCluster

        with LocalCluster(n_workers=int(workers), threads_per_worker=1, processes=True,
                          dashboard_address=None, silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
            yield Runner(client, quiet)
    elif cluster:
        from distributed import Client

        # without sbatch the jobs are never submitted and the run waits at 0% for workers forever
        if shutil.which("sbatch") is None:
            raise ClusterError("cluster: sbatch not found on PATH; run bigseg on a SLURM login node, "
                               "or remove the cluster section / use --workers")
        with slurm_cluster(cluster) as slurm, Client(slurm) as client:
            slurm.scale(jobs=cluster["jobs"])
            log.info("submitted %d SLURM job(s); dashboard %s", cluster["jobs"], client.dashboard_link)
            yield Runner(client, quiet)
    else:
        yield Runner(None, quiet)
