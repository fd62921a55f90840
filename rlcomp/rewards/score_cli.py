"""`rlcomp score FILE.jsonl --verifier NAME`: score existing generations against their gold answers.

Each input line comes out with an added "score" in [0, 1] (and "score_error" when the verification timed out,
raised or crashed: those score 0). Prints accuracy and the failure counts. Also runs as
`python -m rlcomp.rewards.score_cli FILE.jsonl --verifier NAME`.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from rlcomp.rewards.files import atomic_write
from rlcomp.rewards.verifiers import DEFAULT_TIMEOUT, VERIFIERS, get_verifier, verifier_pool


class InputError(Exception):
    """A problem with the user's input, reported as one line without a traceback."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "score", help="score the responses in a JSONL file against gold answers",
        description="Score existing generations: each line of FILE is written out with an added \"score\" in "
                    "[0, 1]; prints accuracy and the counts of timeouts and errors (both score 0).")
    p.add_argument("file", type=Path, help="JSONL file, one JSON object per line")
    p.add_argument("--verifier", required=True,
                   help=f"{', '.join(VERIFIERS)}, or module:function / path/to/file.py:function")
    p.add_argument("--response-key", default="response", help="field holding the response (default: response)")
    p.add_argument("--gold-key", default="answer", help="field holding the gold answer (default: answer)")
    p.add_argument("--out", type=Path, help="write the scored lines here (default: standard output)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                   help=f"seconds per verification before it scores 0 (default: {DEFAULT_TIMEOUT:g})")
    p.add_argument("--workers", type=int, default=None, help="verifier processes (default: all cores)")
    p.set_defaults(func=run)
    return p


def _text(row: dict, key: str, where: str) -> str:
    if key not in row:
        raise InputError(f"{where}: no key {key!r} (keys: {', '.join(list(row)[:10])})")
    value = row[key]
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise InputError(f"{where}: key {key!r} holds {type(value).__name__}, expected a string or number")
    return str(value)


def read_rows(path: Path, response_key: str, gold_key: str) -> tuple[list[dict], list[tuple[str, str]]]:
    """The JSON objects of a JSONL file (blank lines skipped) and their (response, gold) pairs."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror if isinstance(exc, OSError) else exc}") from None
    rows, pairs = [], []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(row, dict):
            raise InputError(f"{where}: expected a JSON object, got {type(row).__name__}")
        pairs.append((_text(row, response_key, where), _text(row, gold_key, where)))
        rows.append(row)
    return rows, pairs


def run(args: argparse.Namespace) -> int:
    try:
        rows, pairs = read_rows(args.file, args.response_key, args.gold_key)
        try:
            get_verifier(args.verifier)
        except Exception as exc:  # unknown name, missing file, import error: all one line
            raise InputError(f"--verifier {args.verifier}: {exc}") from None
    except InputError as exc:
        print(f"rlcomp score: {exc}", file=sys.stderr)
        return 2

    stderr = Console(stderr=True)
    columns = (TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=stderr) as progress, \
            verifier_pool(args.verifier, args.workers, args.timeout) as pool:
        bar = progress.add_task("scoring", total=len(rows))
        outcomes = pool.map([(args.verifier, r, g, {}) for r, g in pairs],
                            on_done=lambda index, outcome: progress.advance(bar))

    for row, outcome in zip(rows, outcomes):
        row["score"] = outcome.value if outcome.status == "ok" else 0.0
        if outcome.status != "ok":
            row["score_error"] = f"{outcome.status}: {outcome.message}".rstrip(": ")
    lines = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    if args.out:
        with atomic_write(args.out) as f:
            f.write(lines)
    else:
        sys.stdout.write(lines)

    failed = {status: sum(o.status == status for o in outcomes) for status in ("timeout", "error", "crashed")}
    total = sum(row["score"] for row in rows)
    accuracy = total / len(rows) if rows else 0.0
    summary = (f"accuracy {accuracy:.4f} ({total:g}/{len(rows)})  timeouts {failed['timeout']}  "
               f"errors {failed['error']}  crashed {failed['crashed']}")
    print(summary, file=sys.stdout if args.out else sys.stderr)  # keep stdout clean when it carries the lines
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlcomp.rewards.score_cli")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["score", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
