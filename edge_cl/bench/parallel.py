"""The study's runs side by side: in worker processes here, or on a Dask cluster, via joblib.

A lifecycle study is many independent runs (one strategy over one ordering), so they can go at
once. :func:`workers` hands out a function that runs calls and yields their results in the order
of the calls, whatever order they finish in, so that a study's results come out as a serial
study's do. Locally the calls go to ``jobs`` processes of joblib's loky backend; with a
scheduler address, to that Dask cluster through joblib's Dask backend (every worker thread of
the cluster takes one call at a time). Large numpy arguments are not copied into each call:
loky hands them to its processes memory-mapped, Dask scatters each array to the cluster once.

joblib is in the ``study`` extra and dask.distributed in ``cluster``; both are imported only
when asked for, and their absence is a :class:`~edge_cl.errors.MissingExtraError` saying what
to install.
"""

from __future__ import annotations

import contextlib
import importlib
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, TypeVar

from edge_cl.errors import ConfigError, MissingExtraError

Call = tuple[Callable[..., Any], tuple[Any, ...]]
"""A function and its positional arguments."""

Ordered = Callable[[Iterable[Call]], Iterator[Any]]
"""Runs calls on the workers; yields their results in the order of the calls."""


T = TypeVar("T")


def check_jobs(jobs: object) -> int:
    """``jobs`` if it is an int >= 1 (how many runs go at once), else a ConfigError.

    >>> check_jobs(2)
    2
    """
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(
            f"jobs (--jobs) must be an int >= 1, got {jobs!r}: 1 runs the study serially, "
            "N runs N of its runs at once in worker processes"
        )
    return jobs


def thread_share(threads: int, jobs: int) -> int:
    """BLAS threads of each of ``jobs`` local runs at once, so that together they hold about
    ``threads``: ``threads // jobs``, at least 1 (more jobs than threads oversubscribe no
    further than one thread each).

    >>> thread_share(2, 2), thread_share(8, 3), thread_share(1, 4)
    (1, 2, 1)
    """
    return max(1, threads // jobs)


def blas_limits(threads: int) -> contextlib.AbstractContextManager[Any]:
    """numpy's BLAS (and any OpenMP pool) held to ``threads`` in this process until the context
    ends; a no-op without threadpoolctl."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    limits: contextlib.AbstractContextManager[Any] = threadpool_limits(threads)
    return limits


def hold_blas(threads: int) -> None:
    """numpy's BLAS (and any OpenMP pool) held to ``threads`` in this process from now on, as a
    worker holds it for its runs, so that runs side by side do not oversubscribe the cores.
    Never lifted after a run: on a Dask worker of several threads, one run lifting it would
    lift it under another still running, whose figures would then depend on when (OpenBLAS
    sums some large products in an order that depends on its threads). A no-op without
    threadpoolctl."""
    with contextlib.suppress(ImportError):
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads)


def _require(module: str, extra: str, what: str) -> ModuleType:
    """``module`` imported, or a MissingExtraError naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExtraError(
            f"{what} needs {module}, which is not installed ({e}): pip install 'edge_cl[{extra}]'"
        ) from e


@contextlib.contextmanager
def _dask_client(address: str, timeout: float) -> Iterator[Any]:
    """A ``distributed.Client`` of the scheduler at ``address``, closed on exit."""
    distributed = _require("distributed", "cluster", "--dask")
    try:
        client = distributed.Client(address, timeout=timeout)
    except (OSError, TimeoutError, ValueError) as e:
        raise ConfigError(
            f"--dask {address}: no Dask scheduler answered there within {timeout:.0f} s ({e}); "
            "start one (`dask scheduler`, then `dask worker ADDRESS` on each machine) or fix "
            "the address"
        ) from e
    with client:
        yield client


@contextlib.contextmanager
def workers(
    jobs: int, dask: str | None = None, shared: Sequence[object] = (), timeout: float = 30.0
) -> Iterator[tuple[Ordered, int]]:
    """Workers for the study's runs, and how many of them take runs at once.

    ``jobs`` local processes (joblib's loky backend), or, given ``dask`` (a scheduler address
    such as ``tcp://host:8786``), the cluster's worker threads through joblib's Dask backend
    (``jobs`` is then not used: the cluster's threads say how many go at once). ``shared`` are
    objects many calls take as an argument: a cluster gets each once, not with every call.
    The cluster's workers must be able to import ``edge_cl`` (the same version). A call's
    exception is raised by the iteration of its result.
    """
    with contextlib.ExitStack() as stack:
        if dask is None:
            joblib = _require("joblib", "study", "--jobs")
            slots = jobs
            backend = joblib.parallel_config(backend="loky")
        else:
            joblib = _require("joblib", "cluster", "--dask")
            client = stack.enter_context(_dask_client(dask, timeout))
            slots = max(1, sum(client.nthreads().values()))
            backend = joblib.parallel_config(
                backend="dask",
                client=client,
                scatter=list(shared),
                wait_for_workers_timeout=timeout,
            )
        stack.enter_context(backend)
        parallel = stack.enter_context(
            joblib.Parallel(n_jobs=slots, return_as="generator", batch_size=1)
        )

        def ordered(calls: Iterable[Call]) -> Iterator[Any]:
            results: Iterator[Any] = parallel(joblib.delayed(f)(*args) for f, args in calls)
            return results

        yield ordered, slots


@dataclass(frozen=True)
class _Failed:
    """What the producer of :func:`prefetched` raised, for its consumer to raise."""

    error: BaseException


class _End:
    """The producer of :func:`prefetched` is done."""


@contextlib.contextmanager
def prefetched(items: Iterable[T], ahead: int = 1) -> Iterator[Iterator[T]]:
    """``items`` produced by a thread of their own, at most ``ahead`` of them waiting for the
    consumer: the study loads the next ordering while the workers run this one, in a thread
    that is neither the main thread (which reports results) nor joblib's (which dispatches calls,
    on Dask in the client's event loop, and should not run an extractor). What the producer
    raises, the consumer raises; leaving the context stops the producer at its next item."""
    waiting: queue.Queue[T | _Failed | _End] = queue.Queue(maxsize=ahead)
    stop = threading.Event()

    def put(item: T | _Failed | _End) -> bool:
        while not stop.is_set():
            try:
                waiting.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
        except BaseException as e:  # raised again by the consumer, in its own thread
            put(_Failed(e))
        else:
            put(_End())

    def consume() -> Iterator[T]:
        while not isinstance(item := waiting.get(), _End):
            if isinstance(item, _Failed):
                raise item.error
            yield item

    threading.Thread(target=produce, name="edge-cl-prefetch", daemon=True).start()
    try:
        yield consume()
    finally:
        stop.set()
