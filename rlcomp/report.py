"""What a run shows and writes: rich progress bars and tables, TensorBoard scalars, atomic JSON files."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

console = Console()


def progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
        console=console, transient=False,
    )


def write_json(path: str | Path, obj) -> None:
    """Write JSON atomically: a reader sees the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
    os.replace(f.name, path)


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
