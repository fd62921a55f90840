"""A pool of worker processes that maps one function over items with a wall-clock limit per item.

Why not `multiprocessing.Pool` or `concurrent.futures`: neither can kill the one worker stuck on a hanging
item and carry on. math-verify can hang inside sympy in C code that no signal interrupts (big-integer powers,
factorials), and its own SIGALRM timeouts only work in a main thread, so the only safe limit is to kill the
process. Workers are forked by a forkserver that has already imported the function's module: replacing a
killed worker takes milliseconds, and nothing is forked from a multi-threaded process (a Ray actor is one).
"""
from __future__ import annotations

import multiprocessing
import os
import resource
import time
from collections import deque
from multiprocessing.connection import wait
from typing import Any, Callable, Iterable, NamedTuple

DEFAULT_MEMORY_LIMIT_MB = 4096  # per worker: a power tower must fail with MemoryError, not take the machine


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
                 memory_limit_mb: int | None = DEFAULT_MEMORY_LIMIT_MB):
        self.fn, self.timeout, self.memory_limit_mb = fn, timeout, memory_limit_mb
        self.size = workers or os.cpu_count() or 1
        self._ctx = multiprocessing.get_context("forkserver")
        # Imported once by the forkserver, not by every worker. Takes effect only if this process has not
        # started its forkserver yet. As with any spawn/forkserver start, a script needs the
        # `if __name__ == "__main__":` guard.
        self._ctx.set_forkserver_preload(["__main__", fn.__module__])
        self._idle: list[_Worker] = []

    def _new_worker(self) -> _Worker:
        return _Worker(self._ctx, self.fn, self.memory_limit_mb)

    def map(self, items: Iterable[tuple], on_done: Callable[[int, Outcome], None] | None = None) -> list[Outcome]:
        """Run `fn(*args)` for every args tuple; `on_done(index, outcome)` is called as each item finishes."""
        todo = deque(enumerate(items))
        results: list[Outcome | None] = [None] * len(todo)
        while len(self._idle) < min(self.size, len(todo)):
            self._idle.append(self._new_worker())
        busy: dict[_Worker, tuple[int, float]] = {}  # worker -> (item index, deadline)

        def finish(worker: _Worker, index: int, outcome: Outcome, healthy: bool) -> None:
            busy.pop(worker, None)
            if not healthy:
                worker.stop(kill=True)
                worker = self._new_worker()
            self._idle.append(worker)
            results[index] = outcome
            if on_done:
                on_done(index, outcome)

        while todo or busy:
            while self._idle and todo:
                worker = self._idle.pop()
                index, args = todo.popleft()
                try:
                    worker.conn.send(args)
                except OSError:  # the worker died while idle: replace it and retry the item
                    worker.stop(kill=True)
                    self._idle.append(self._new_worker())
                    todo.appendleft((index, args))
                    continue
                busy[worker] = (index, time.monotonic() + self.timeout)
            if not busy:
                continue
            waits = {w.conn: w for w in busy} | {w.process.sentinel: w for w in busy}
            next_deadline = min(deadline for _, deadline in busy.values())
            ready = wait(list(waits), timeout=max(0.0, next_deadline - time.monotonic()))
            answered = {waits[r] for r in ready}
            now = time.monotonic()
            for worker, (index, deadline) in list(busy.items()):
                if worker in answered:
                    try:
                        status, value, message = worker.conn.recv()
                        finish(worker, index, Outcome(value, status, message), healthy=True)
                    except (EOFError, OSError):
                        code = worker.process.exitcode
                        finish(worker, index, Outcome(None, "crashed", f"worker exit code {code}"), healthy=False)
                elif now >= deadline:
                    finish(worker, index, Outcome(None, "timeout", f"over {self.timeout:g} s"), healthy=False)
        return results

    def close(self) -> None:
        while self._idle:
            self._idle.pop().stop()

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
