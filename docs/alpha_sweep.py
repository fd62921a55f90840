"""The CoT-Valve alpha sweep plot in the README: mean response tokens and accuracy against the LoRA scale, from
the eval results (summary.json) of one or more runs whose eval stages set `lora_scale`.

    python docs/alpha_sweep.py runs/valve runs/valve_sweep --out docs/cot_valve_alpha.png
"""
import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def points(run_dirs: list[str]) -> dict[str, list[tuple]]:
    """(alpha, mean tokens, accuracy) per decoding (greedy, or sampled at its temperature), sorted by alpha."""
    series: dict[str, list[tuple]] = {}
    for run in run_dirs:
        for e in json.loads((Path(run) / "summary.json").read_text())["evals"]:
            if e.get("lora_scale") is None:
                continue
            name = "greedy" if not e.get("temperature") else f"sampled (T {e['temperature']:g})"
            series.setdefault(name, []).append((e["lora_scale"], e["mean_response_tokens"], e["accuracy"]))
    return {name: sorted(p) for name, p in series.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    fig, (tokens, accuracy) = plt.subplots(1, 2, figsize=(9, 3.5))
    for name, p in points(args.runs).items():
        alphas = [a for a, _, _ in p]
        tokens.plot(alphas, [t for _, t, _ in p], marker="o", label=name)
        accuracy.plot(alphas, [c for _, _, c in p], marker="o", label=name)
    tokens.set(xlabel="alpha (theta + alpha * delta)", ylabel="mean response tokens")
    accuracy.set(xlabel="alpha (theta + alpha * delta)", ylabel="accuracy", ylim=(0, 1.02))
    tokens.legend()
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)


if __name__ == "__main__":
    main()
