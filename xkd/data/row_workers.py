"""Worker processes that read and decode the DALI source's rows on the CPU-decode path (issue 15),
each storing its rows into the batch's shared memory (:mod:`xkd.data.batch_memory`).

Why processes: a row is ~100 calls that release Python's GIL and take it back (each PyAV packet
and frame, each of libsndfile's reads from memory, which call back into Python), so reader threads
in the training process hand the GIL over a few hundred times per sample: they spend more CPU per
sample than one reader alone and cannot keep two cores busy (BENCHMARKS.md, "Rows in worker
processes"), let alone the many cores a rank has on a GPU node.

Why not DALI's parallel external source: it starts its workers with each graph (the loader builds
one per epoch and per batch with a corrupt sample), sends them the source with every sample
reference, and passes each array through its shared memory and then its batch buffers.

The workers fork from a server process that imported the decoders once (``forkserver``): not from
the training process, whose CUDA context and threads a fork would copy; a new pool (each loader)
starts in milliseconds.
"""
from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import shared_memory

from xkd.data.batch_memory import BatchBuffer, BatchLayout, PlanesWindow, layout_arrays, store_row
from xkd.data.sample_check import DescribedError, describe

# Modules the server imports once for every worker it forks: the row's readers and decoders, and
# the main script (a forkserver or spawned worker runs it as ``__mp_main__``: once, in the server, so
# a training script's imports are not repeated in every worker; its top level must be guarded by
# ``if __name__ == "__main__":``, as with every multiprocessing start method but fork).
# The server also ignores the job's signals, which its workers inherit (xkd.data.row_worker_signals).
PRELOAD = ["__main__", "xkd.data.dali_pipeline", "xkd.data.row_worker_signals"]


class WorkerDied(Exception):
    """A worker process died while reading rows (killed, out of memory, or crashed in a decoder).
    Not a corrupt sample, nor a DALI error (the loader takes RuntimeErrors of its graph for those):
    the run stops with it."""


# ---- worker side ----


def _ignore_job_signals() -> None:
    from xkd.data.row_worker_signals import ignore_job_signals

    ignore_job_signals()


_attached: dict[str, tuple[shared_memory.SharedMemory, BatchLayout, tuple]] = {}


def _arrays(layout: BatchLayout) -> tuple:
    """This worker's views of the segment of ``layout`` (segments are reused: attached once)."""
    attached = _attached.get(layout.name)
    if attached is None or attached[1] != layout:
        segment = attached[0] if attached is not None else shared_memory.SharedMemory(layout.name)
        attached = _attached[layout.name] = (segment, layout, layout_arrays(layout, segment.buf))
    return attached[2]


def _read_in_worker(read_row: Callable[..., dict], rows: list[tuple[tuple, int]], layout: BatchLayout) -> list[dict]:
    """Each ``read_row(*args)`` of ``rows`` ((args, clip) pairs) stored into its clip of the batch
    (:func:`store_row`); a window too large for it comes back as planes; {"error": description}
    for a row that does not read."""
    answers = []
    for args, clip in rows:
        try:
            row = read_row(*args)
        except Exception as error:  # the sample is corrupt: said in the parent, as a reader thread would
            answers.append({"error": describe(error)})
            continue
        row = store_row(row, layout, _arrays(layout), clip)
        if row["window"] is not None:
            row["window"] = PlanesWindow(*(plane.numpy() for plane in row["window"].planes()))
        answers.append(row)
    return answers


# ---- loader side ----

class RowWorkers:
    """``workers`` processes storing rows into batches: ``submit(read_row, args, buffer, clip)``, a
    future of the row (:func:`store_row`), or ``submit_rows`` for several. Unreadable rows fail with
    :class:`~xkd.data.sample_check.DescribedError` (the worker's description of the error); rows of
    a dead worker with :class:`WorkerDied`."""

    def __init__(self, workers: int):
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(PRELOAD)  # before the server starts; later calls change nothing
        # Each worker ignores the job's signals itself too (a server started without the preload).
        self.pool = ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_ignore_job_signals)
        self.workers = workers

    def pids(self) -> list[int]:
        """The worker processes started so far (for CPU accounting)."""
        return [process.pid for process in list(self.pool._processes.values())]

    def submit(self, read_row: Callable[..., dict], args: tuple, buffer: BatchBuffer, clip: int) -> Future:
        """The future of one row, ``read_row(*args)`` stored at ``clip`` of ``buffer``."""
        return self.submit_rows(read_row, [(args, clip)], buffer)[0]

    def submit_rows(self, read_row: Callable[..., dict], rows: list[tuple[tuple, int]], buffer: BatchBuffer
                    ) -> list[Future]:
        """The futures of ``rows`` ((args, clip) pairs) of one batch, read by one worker in one task:
        a task costs ~0.25 ms of CPU between the two processes, so a batch goes out in as many tasks
        as there are workers, not one per row."""
        futures = [Future() for _ in rows]
        try:
            task = self.pool.submit(_read_in_worker, read_row, rows, buffer.layout)
        except BrokenProcessPool as error:
            raise WorkerDied(f"a decode worker process died: {error}") from error
        # The callback holds ``buffer``: its memory is not reused while the worker may still write into it.
        task.add_done_callback(lambda task: _deliver(task, futures, buffer))
        return futures

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def _deliver(task: Future, rows: list[Future], buffer: BatchBuffer) -> None:
    """The worker's answers -> the rows' futures (on the pool's result thread)."""
    try:
        answers = task.result()
    except BrokenProcessPool as error:
        failure: BaseException = WorkerDied(f"a decode worker process died (killed, out of memory, or crashed in a "
                                            f"decoder): {error}")
        answers = [None] * len(rows)
    except BaseException as error:  # cancelled at close, or the task could not be sent
        failure, answers = error, [None] * len(rows)
    for row, answer in zip(rows, answers):
        if answer is None:
            row.set_exception(failure)
        elif "error" in answer:
            row.set_exception(DescribedError(answer["error"]))
        else:
            row.set_result(answer)
    del buffer
