"""The currency between components: one prompt's example, and one sampled response to it."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Example:
    """A problem from a dataset: the templated prompt, its gold answer and, when known, a gold response."""

    prompt: str
    answer: str
    response: str = ""  # gold chain of thought + answer (for SFT); empty when the dataset has none
    id: str = ""
    data_source: str = ""  # dataset name; selects the verifier and is passed to verl-style rewards
    extra: dict[str, Any] = field(default_factory=dict)  # remaining columns (TRL-style rewards get them)


@dataclass
class Sample:
    """One generated response to one prompt. Samples of the same prompt share `group`."""

    prompt: str
    response: str
    answer: str
    prompt_ids: list[int] = field(default_factory=list)
    response_ids: list[int] = field(default_factory=list)
    logprobs: list[float] | None = None  # per response token, from the rollout engine
    finished: bool = True  # ended with EOS rather than by the length limit
    group: int = 0
    data_source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    rewards: dict[str, float] = field(default_factory=dict)  # every reward part, for logging
    reward: float = 0.0  # the weighted sum the algorithm uses

    @property
    def length(self) -> int:
        """Response length in tokens (characters when no token ids are known)."""
        return len(self.response_ids) if self.response_ids else len(self.response)
