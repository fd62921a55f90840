"""O1-Pruner's reference table: per prompt, the mean length L_ref and mean accuracy A_ref of K samples of the
reference model, collected once before training, saved to a file and reused."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from rlcomp.rewards.files import atomic_write
from rlcomp.sample import Sample, prompt_key

FORMAT = "rlcomp.reference/1"


@dataclass
class Reference:
    length: float  # L_ref: mean response length (tokens)
    accuracy: float  # A_ref: mean correctness
    samples: int  # K
    sample_lengths: list[int] | None = None  # each of the K samples (for O1-Pruner's dataset z-score)
    sample_accuracies: list[float] | None = None


class ReferenceTable:
    def __init__(self, by_prompt: dict[str, Reference]):
        self.by_prompt = by_prompt

    @classmethod
    def from_groups(cls, groups: list[list[Sample]]) -> ReferenceTable:
        """Statistics of scored reference samples (`sample.rewards["accuracy"]` set, e.g. by `Scorer.score`).
        Samples are keyed by prompt (`prompt_key`), so one prompt may be spread over several groups."""
        lengths: dict[str, list[int]] = {}
        accuracies: dict[str, list[float]] = {}
        for g, group in enumerate(groups):
            for i, s in enumerate(group):
                if "accuracy" not in s.rewards:
                    raise ValueError(f"sample {i} of group {g} has no rewards['accuracy']: score the reference "
                                     "samples first (Scorer.reference_table does)")
                lengths.setdefault(prompt_key(s.prompt), []).append(s.length)
                accuracies.setdefault(prompt_key(s.prompt), []).append(s.rewards["accuracy"])
        return cls({p: Reference(sum(n) / len(n), sum(accuracies[p]) / len(n), len(n), n, accuracies[p])
                    for p, n in lengths.items()})

    def lookup(self, prompt) -> Reference:
        try:
            return self.by_prompt[prompt_key(prompt)]
        except KeyError:
            raise KeyError(f"prompt not in the O1-Pruner reference table ({len(self)} prompts): "
                           f"{prompt_key(prompt)[:80]!r}") from None

    def __len__(self) -> int:
        return len(self.by_prompt)

    def save(self, path: str | Path) -> None:
        rows = [{"prompt": p, **asdict(r)} for p, r in self.by_prompt.items()]
        with atomic_write(path) as f:
            json.dump({"format": FORMAT, "prompts": rows}, f)

    @classmethod
    def load(cls, path: str | Path) -> ReferenceTable:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if data.get("format") != FORMAT:
            raise ValueError(f"{path}: not an rlcomp reference table (format {data.get('format')!r})")
        return cls({row.pop("prompt"): Reference(**row) for row in data["prompts"]})
