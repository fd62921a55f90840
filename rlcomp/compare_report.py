"""A comparison's report, all from compare.json's numbers: compare.md, pareto.png, length_by_level.png, one
length histogram per method (lengths_<method>.png) and report.html, one page holding them all (the plots
inlined: it opens from disk with no network)."""
from __future__ import annotations

import base64
import html
from pathlib import Path

from rlcomp.report import write_atomic


def _levels(result: dict, data: str) -> list[str]:
    levels: list[str] = []
    for row in ok_rows(result):
        for level in row["results"][data]["greedy"].get("by_level", {}):
            if level not in levels:
                levels.append(level)
    return levels


def ok_rows(result: dict) -> list[dict]:
    return [r for r in result["rows"] if r["status"] == "ok"]


def table(result: dict, data: str) -> tuple[list[str], list[list[str]]]:
    """The header and cells of one data source's table (compare.md and report.html show the same cells)."""
    spec, levels = result["eval"], _levels(result, data)
    header = ["method", "accuracy", "mean tokens", "tokens vs start", "AES"]
    if spec["samples"]:
        header += [f"pass@1 ({spec['samples']} samples)"] + [f"pass@{k}" for k in spec["pass_k"]]
    header += [f"level {level} acc / tokens" for level in levels]
    header += ["train time (s)", "train tokens", "wall time (s)"]
    cells = []
    for row in result["rows"]:
        if row["status"] != "ok":
            cells.append([row["method"], f"failed: {row['error']}"] + [""] * (len(header) - 2))
            continue
        res = row["results"][data]
        greedy = res["greedy"]
        line = [row["method"], f"{greedy['accuracy']:.3f}", f"{greedy['mean_response_tokens']:.1f}",
                f"{res['tokens_vs_start']:.2f}x" if "tokens_vs_start" in res else "",
                f"{res['aes']:+.3f}" if res.get("aes") is not None else ""]
        if spec["samples"]:
            sampled = res["sampled"]
            line += [f"{sampled['accuracy']:.3f}"] + [f"{sampled[f'pass@{k}']:.3f}" for k in spec["pass_k"]]
        by_level = greedy.get("by_level", {})
        line += [f"{by_level[lv]['accuracy']:.3f} / {by_level[lv]['mean_response_tokens']:.1f}" if lv in by_level
                 else "" for lv in levels]
        line += [f"{row['train_seconds']:.0f}", str(row["train_tokens"]), f"{row['wall_seconds']:.0f}"]
        cells.append(line)
    return header, cells


def intro(result: dict) -> str:
    spec, machine = result["eval"], result["machine"]
    sampled = (f"; sampled: {spec['samples']} per problem at temperature {spec['temperature']}, top_p "
               f"{spec['top_p']}" if spec["samples"] else "")
    return (f"Start model: `{result['start_model']}`. Every row evaluated alike: greedy, at most "
            f"{spec['max_tokens']} tokens{sampled}. Lengths count reasoning positions: response tokens, plus the "
            "continuous thoughts of a latent model. AES: O1-Pruner's accuracy-efficiency score against the start "
            "row (dL + 3 dAcc, or dL - 5 |dAcc| when accuracy drops). Processor: "
            f"{machine['processor']}, torch {machine['torch']}. Took {result['seconds']:.0f} s.")


def shared_note(result: dict) -> str:
    """Which rows took stages another row made (their train time counts those stages, their wall time not)."""
    taken = [f"{row['method']}: {', '.join(f'{stage} (from {src})' for stage, src in row['shared_stages'].items())}"
             for row in ok_rows(result) if row.get("shared_stages")]
    return ("Stages made once and shared (in the train time of each row that uses them, not in its wall time): "
            + "; ".join(taken) + ".") if taken else ""


def markdown(result: dict) -> str:
    lines = ["# Comparison", "", intro(result), ""]
    for data in result["datasets"]:
        header, cells = table(result, data)
        lines += [f"## {data}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(c) + " |" for c in cells] + [""]
    if shared := shared_note(result):
        lines += [shared, ""]
    if len(result["datasets"]) > 1:
        lines += ["## Mean AES over the data sources", "", "| method | mean AES |", "|---|---|"]
        lines += [f"| {r['method']} | {r['mean_aes']:+.3f} |" for r in ok_rows(result) if r.get("mean_aes") is not None]
        lines.append("")
    return "\n".join(lines)


def frontier(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (tokens, accuracy) points no other point beats on both: fewer tokens and at least the accuracy."""
    best, out = float("-inf"), []
    for tokens, accuracy in sorted(points, key=lambda p: (p[0], -p[1])):
        if accuracy > best:
            out.append((tokens, accuracy))
            best = accuracy
    return out


def _span(points: list[tuple[float, float]], axis: int) -> float:
    values = [p[axis] for p in points]
    return (max(values) - min(values)) or 1.0


def spread_labels(points: list[tuple[float, float]], gap: float = 0.045) -> list[float]:
    """Label heights for points drawn with their labels to the right: points close in x (within 4% of the x
    range) get labels at least `gap` of the y range apart, so that methods at one length stay readable."""
    ys = [y for _, y in points]
    x_near, y_gap = 0.04 * _span(points, 0), gap * _span(points, 1)
    order = sorted(range(len(points)), key=lambda i: -points[i][1])  # top down
    out = list(ys)
    for n, i in enumerate(order):
        for j in order[:n]:  # below every higher label nearby in x that it would overlap
            if abs(points[i][0] - points[j][0]) <= x_near and abs(out[j] - out[i]) < y_gap:
                out[i] = out[j] - y_gap
    return out


def plots(result: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, datasets, written = ok_rows(result), result["datasets"], []

    def save(fig, name: str) -> None:
        path = out / name
        fig.tight_layout()
        fig.savefig(path.with_suffix(".tmp.png"), dpi=110)
        path.with_suffix(".tmp.png").replace(path)  # atomic, as every result file
        plt.close(fig)
        written.append(path)

    fig, axes = plt.subplots(1, len(datasets), figsize=(7 * len(datasets), 5.5), squeeze=False)
    for ax, data in zip(axes[0], datasets):
        points = [(r["results"][data]["greedy"]["mean_response_tokens"], r["results"][data]["greedy"]["accuracy"])
                  for r in rows]
        ax.set_prop_cycle(color=plt.cm.tab20.colors)  # a colour per row for up to 20 rows
        label_ys = spread_labels(points)
        for row, (tokens, accuracy), label_y in zip(rows, points, label_ys):
            ax.scatter(tokens, accuracy, s=40)
            ax.annotate(row["method"], (tokens, accuracy), xytext=(tokens + 0.02 * _span(points, 0), label_y),
                        fontsize=8, va="center", arrowprops={"arrowstyle": "-", "color": "grey", "linewidth": 0.5})
        if front := frontier(points):
            ax.step(*zip(*front), where="post", color="grey", linestyle="--", linewidth=1, label="frontier")
            ax.legend(loc="lower right", fontsize=8)
        ax.set(title=f"{data}: accuracy vs length (greedy)", ylabel="accuracy",
               xlabel="mean reasoning positions (response tokens + latent thoughts)")
        ax.grid(alpha=0.3)
    save(fig, "pareto.png")

    leveled = [d for d in datasets if _levels(result, d)]
    if leveled:
        fig, axes = plt.subplots(1, len(leveled), figsize=(8.5 * len(leveled), 4.5), squeeze=False)
        for ax, data in zip(axes[0], leveled):
            levels = _levels(result, data)
            ax.set_prop_cycle(color=plt.cm.tab20.colors)
            for row in rows:
                by_level = row["results"][data]["greedy"].get("by_level", {})
                ax.plot(levels, [by_level[lv]["mean_response_tokens"] if lv in by_level else float("nan")
                                 for lv in levels], marker="o", label=row["method"])
            ax.set(title=f"{data}: length by level (greedy)", xlabel="level", ylabel="mean reasoning positions")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))  # beside the lines, not on them
        save(fig, "length_by_level.png")

    for row in rows:
        fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 3.5), squeeze=False)
        for ax, data in zip(axes[0], datasets):
            greedy = row["results"][data]["greedy"]
            ax.hist(greedy["lengths"], bins=30, color="tab:blue", alpha=0.8)
            ax.axvline(greedy["mean_response_tokens"], color="black", linestyle="--", linewidth=1)
            ax.set(title=f"{row['method']} on {data}: mean {greedy['mean_response_tokens']:.1f} tokens",
                   xlabel="reasoning positions (greedy)", ylabel="problems")
        save(fig, f"lengths_{row['method']}.png")
    return written


def page(result: dict, images: list[Path]) -> str:
    """report.html: the tables and every plot (inlined as data URIs) on one page that needs no network."""
    esc = html.escape
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>rlcomp comparison</title><style>",
             "body{font-family:sans-serif;margin:2em;max-width:1400px} table{border-collapse:collapse;margin:1em 0}",
             "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right} td:first-child{text-align:left}",
             "img{max-width:100%;margin:1em 0;display:block}</style></head><body>",
             "<h1>Comparison</h1>", f"<p>{esc(intro(result)).replace('`', '')}</p>"]
    for data in result["datasets"]:
        header, cells = table(result, data)
        parts.append(f"<h2>{esc(data)}</h2><table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in line) + "</tr>" for line in cells]
        parts.append("</table>")
    if shared := shared_note(result):
        parts.append(f"<p>{esc(shared)}</p>")
    for image in images:
        encoded = base64.b64encode(image.read_bytes()).decode()
        parts.append(f"<h3>{esc(image.stem)}</h3><img alt='{esc(image.stem)}' src='data:image/png;base64,{encoded}'>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(result: dict, out: str | Path) -> None:
    out = Path(out)
    write_atomic(out / "compare.md", markdown(result))
    images = plots(result, out) if ok_rows(result) else []
    write_atomic(out / "report.html", page(result, images))
