"""What a run shows and writes: rich progress bars and tables, TensorBoard scalars, atomic JSON files."""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

console = Console()


class progress:
    """A progress bar with ETA: rich's on a terminal; in logs (CI, `ray job logs`) a line every 10%."""

    def __init__(self, description: str, total: int):
        self.description, self.total, self.done, self.info = description, total, 0, ""
        self.started, self.next_report = time.time(), 0.1
        self.bar = None
        if console.is_terminal:
            self.bar = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=console,
            )
            self.task = self.bar.add_task(description, total=total, info="")

    def __enter__(self):
        if self.bar:
            self.bar.start()
        return self

    def __exit__(self, *exc):
        if self.bar:
            self.bar.stop()

    def advance(self, n: int = 1, info: str | None = None) -> None:
        self.done += n
        self.info = self.info if info is None else info
        if self.bar:
            self.bar.update(self.task, advance=n, info=self.info)
        elif self.done >= self.next_report * self.total or self.done == self.total:
            self.next_report = int(10 * self.done / self.total) / 10 + 0.1
            elapsed = time.time() - self.started
            eta = elapsed / self.done * (self.total - self.done)
            console.print(f"{self.description} {self.done}/{self.total} [{elapsed:.0f}s, eta {eta:.0f}s] {self.info}")


def write_atomic(path: str | Path, text: str) -> None:
    """Write a file atomically: a reader sees the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as f:
        f.write(text)
    os.replace(f.name, path)


def write_json(path: str | Path, obj) -> None:
    write_atomic(path, json.dumps(obj, indent=2) + "\n")


def write_jsonl(path: str | Path, rows) -> None:
    write_atomic(path, "".join(json.dumps(row) + "\n" for row in rows))


def eval_table(evals: list[dict]) -> Table:
    table = Table(title="Evaluations")
    for column in ("stage", "dataset", "n", "accuracy", "mean_response_tokens"):
        table.add_column(column, justify="left" if column in ("stage", "dataset") else "right")
    for e in evals:
        table.add_row(e["stage"], e["dataset"], str(e["n"]), f"{e['accuracy']:.3f}", f"{e['mean_response_tokens']:.1f}")
    return table


class MetricLogger:
    """TensorBoard scalars under `<stage>/<metric>`."""

    def __init__(self, log_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(log_dir))

    def log(self, stage: str, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(f"{stage}/{key}", value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
