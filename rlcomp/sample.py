"""The currency between components: one prompt's example, and one sampled response to it."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


def prompt_key(prompt: Any) -> str:
    """A prompt as a string key: the text itself, or a conversation (a list of messages) as canonical JSON."""
    return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True, ensure_ascii=False)


@dataclass
class Example:
    """A problem from a dataset: its prompt (text with the instruction, or a list of messages), its gold answer
    and, when known, a gold response."""

    prompt: str | list[dict[str, Any]]
    answer: str
    response: str = ""  # gold chain of thought + answer (for SFT); empty when the dataset has none
    id: str = ""
    data_source: str = ""  # dataset name; selects the verifier and is passed to verl-style rewards
    extra: dict[str, Any] = field(default_factory=dict)  # the dataset's columns (TRL-style rewards get them)
    prompt_ids: list[int] | None = None  # the prompt rendered for the model (rlcomp/prompts.py); engines use these


@dataclass
class Sample:
    """One generated response to one prompt. Samples of the same prompt share `group`."""

    prompt: str | list[dict[str, Any]]  # as the dataset gave it (text, or messages)
    response: str
    answer: str
    prompt_ids: list[int] = field(default_factory=list)
    response_ids: list[int] = field(default_factory=list)
    logprobs: list[float] | None = None  # per response token, from the rollout engine
    finished: bool = True  # ended with EOS (or the template's end-of-turn token) rather than by the length limit
    thinking_tokens: int | None = None  # response tokens up to and including </think>; None: no thinking block
    latent_positions: int = 0  # continuous thoughts before the response (a Coconut model): reasoning positions too
    group: int = 0
    data_source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    rewards: dict[str, float] = field(default_factory=dict)  # every reward part, for logging
    reward: float = 0.0  # the weighted sum the algorithm uses

    @property
    def length(self) -> int:
        """Reasoning positions: response tokens (characters when no token ids are known) and any continuous
        thoughts before them, so that explicit and latent methods are measured alike."""
        return (len(self.response_ids) if self.response_ids else len(self.response)) + self.latent_positions
