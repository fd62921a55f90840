"""A pool of worker processes that maps one function over items with a wall-clock limit per item.

Why not `multiprocessing.Pool` or `concurrent.futures`: neither can kill the one worker stuck on a hanging
item and carry on. math-verify can hang inside sympy in C code that no signal interrupts (big-integer powers,
factorials), and its own SIGALRM timeouts only work in a main thread, so the only safe limit is to kill the
process. Workers are forked by a forkserver that has already imported the function's module: replacing a
killed worker takes milliseconds, and nothing is forked from a multi-threaded process (a Ray actor is one).
"""
from __future__ import annotations

import gc
import multiprocessing
import os
import resource
import time
from collections import deque
from multiprocessing.connection import wait
from multiprocessing.reduction import ForkingPickler
from typing import Any, Callable, Iterable, NamedTuple

DEFAULT_MEMORY_LIMIT_MB = 4096  # per worker: a power tower must fail with MemoryError, not take the machine
PREFETCH_ITEMS = 4  # items a busy worker may have waiting in its pipe, so it never idles between items
PREFETCH_BYTES = 8 * 1024  # ... each at most this big (pickled), so that they all fit in the pipe's buffer


class Outcome(NamedTuple):
    value: Any
    status: str  # "ok" | "timeout" | "error" (the function raised) | "crashed" (the worker died)
    message: str = ""


def _describe(exc: BaseException) -> str:
    try:
        return f"{type(exc).__name__}: {exc}"[:500]
    except Exception:  # str() itself can fail, e.g. on an int too long to print
        return type(exc).__name__


def _serve(conn, fn: Callable, memory_limit_mb: int | None) -> None:
    """A worker's loop: call `fn(*args)` for each args received and send back (status, value, message)."""
    if memory_limit_mb:
        limit = memory_limit_mb * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    # The inherited heap (all of rlcomp's imports) is never garbage: keep the collector from walking it again
    # and again (sympy allocates a lot), and from touching its shared copy-on-write pages.
    gc.freeze()
    while True:
        try:
            args = conn.recv()
        except EOFError:  # the pool closed its end
            return
        try:
            reply = ("ok", fn(*args), "")
        except BaseException as exc:  # anything the item does must become a score of 0, not a dead worker
            reply = ("error", None, _describe(exc))
        try:
            conn.send(reply)
        except Exception as exc:  # e.g. an unpicklable result
            conn.send(("error", None, f"result could not be sent back: {_describe(exc)}"))


class _Worker:
    def __init__(self, ctx, fn: Callable, memory_limit_mb: int | None):
        self.conn, child_conn = ctx.Pipe()
        self.process = ctx.Process(target=_serve, args=(child_conn, fn, memory_limit_mb), daemon=True)
        self.process.start()
        child_conn.close()  # so the worker's death shows up here as EOF
        self.sent: deque[tuple[int, bytes]] = deque()  # items sent and not answered; the oldest is running
        self.started = 0.0  # when the oldest started, as far as this side can tell

    def stop(self, kill: bool = False) -> None:
        if kill:
            self.process.kill()
        self.conn.close()  # a live worker reads EOF and returns
        self.process.join(timeout=None if kill else 2)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


class WorkerPool:
    """`WorkerPool(fn, workers, timeout).map(list_of_args)` -> one `Outcome` per item, in input order.

    An item running longer than `timeout` seconds is killed with its worker and scored "timeout"; a worker that
    dies is replaced. The pool stays usable after anything an item does. Use it as a context manager or call
    `close()`.
    """

    def __init__(self, fn: Callable, workers: int | None = None, timeout: float = 5.0,
                 memory_limit_mb: int | None = DEFAULT_MEMORY_LIMIT_MB, preload: Iterable[str] = ()):
        self.fn, self.timeout, self.memory_limit_mb = fn, timeout, memory_limit_mb
        self.size = workers or os.cpu_count() or 1
        self._ctx = multiprocessing.get_context("forkserver")
        # Imported once by the forkserver, not by every worker, with `preload` (modules that warm caches up).
        # Takes effect only if this process has not started its forkserver yet. As with any spawn/forkserver
        # start, a script needs the `if __name__ == "__main__":` guard.
        self._ctx.set_forkserver_preload(["__main__", fn.__module__, *preload])
        self._workers: list[_Worker] = []

    def map(self, items: Iterable[tuple], on_done: Callable[[int, Outcome], None] | None = None) -> list[Outcome]:
        """Run `fn(*args)` for every args tuple; `on_done(index, outcome)` is called as each item finishes."""
        todo = deque((index, ForkingPickler.dumps(args)) for index, args in enumerate(items))
        results: list[Outcome | None] = [None] * len(todo)
        while len(self._workers) < min(self.size, len(todo)):
            self._workers.append(_Worker(self._ctx, self.fn, self.memory_limit_mb))

        def settle(worker: _Worker, outcome: Outcome) -> None:
            index, _ = worker.sent.popleft()
            worker.started = time.monotonic()  # the queued item, if any, runs now
            results[index] = outcome
            if on_done:
                on_done(index, outcome)

        def replace(worker: _Worker) -> None:
            todo.extendleft(reversed(worker.sent))  # items queued behind the failed one are retried
            worker.stop(kill=True)
            self._workers[self._workers.index(worker)] = _Worker(self._ctx, self.fn, self.memory_limit_mb)

        while todo or any(w.sent for w in self._workers):
            # Each item goes to the least loaded worker. One item runs and small ones may queue behind it, so a
            # worker need not wait for this process between items. A big item never queues: sending it would
            # block here until the worker is free, perhaps for good if the running item hangs.
            while todo:
                worker = min(self._workers, key=lambda w: len(w.sent))
                if worker.sent and (len(worker.sent) > PREFETCH_ITEMS or len(todo[0][1]) > PREFETCH_BYTES):
                    break
                item = todo.popleft()
                try:
                    worker.conn.send_bytes(item[1])
                except OSError:  # the worker died while idle: retry the item on a new one
                    todo.appendleft(item)
                    replace(worker)
                    continue
                if not worker.sent:
                    worker.started = time.monotonic()
                worker.sent.append(item)
            busy = [w for w in self._workers if w.sent]
            waits = {w.conn: w for w in busy} | {w.process.sentinel: w for w in busy}
            next_deadline = min(w.started for w in busy) + self.timeout
            answered = {waits[r] for r in wait(list(waits), timeout=max(0.0, next_deadline - time.monotonic()))}
            for worker in busy:
                if worker in answered:
                    try:
                        status, value, message = worker.conn.recv()
                    except (EOFError, OSError):
                        settle(worker, Outcome(None, "crashed", f"worker exit code {worker.process.exitcode}"))
                        replace(worker)
                    else:
                        settle(worker, Outcome(value, status, message))
                elif time.monotonic() >= worker.started + self.timeout:
                    settle(worker, Outcome(None, "timeout", f"over {self.timeout:g} s"))
                    replace(worker)
        return results

    def close(self) -> None:
        while self._workers:
            self._workers.pop().stop()

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
