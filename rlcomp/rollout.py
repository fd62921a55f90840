"""RolloutWorker: a Ray actor that generates responses with an inference engine.

Engines share one interface: `generate(prompts, params) -> list[list[Sample]]` (n samples per prompt) and
`load_weights(state_dict)`. `hf` uses transformers' generate (CPU and tests).
"""
from __future__ import annotations

from dataclasses import dataclass

import ray
import torch

from rlcomp.sample import Example, Sample


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    max_tokens: int = 256
    batch_size: int = 128  # prompts per generate call (hf engine)


class HFEngine:
    def __init__(self, model_path: str, device: str = "cpu"):
        from transformers import AutoModelForCausalLM

        from rlcomp.models import load_tokenizer

        self.tokenizer = load_tokenizer(model_path)
        self.tokenizer.padding_side = "left"  # generation continues at the right edge of every row
        self.device = torch.device(device)
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).to(self.device).eval()

    def load_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state_dict, strict=False)

    @torch.no_grad()
    def generate(self, examples: list[Example], params: SamplingParams) -> list[list[Sample]]:
        groups: list[list[Sample]] = [[] for _ in examples]
        # Each prompt repeated n times; rows sorted by prompt length so batches pad little.
        rows = sorted(((i, e) for i, e in enumerate(examples) for _ in range(params.n)), key=lambda r: len(r[1].prompt))
        eos, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        for start in range(0, len(rows), params.batch_size):
            chunk = rows[start : start + params.batch_size]
            enc = self.tokenizer([e.prompt for _, e in chunk], return_tensors="pt", padding=True).to(self.device)
            sampling = params.temperature > 0
            out = self.model.generate(
                **enc, max_new_tokens=params.max_tokens, do_sample=sampling, pad_token_id=pad, eos_token_id=eos,
                **({"temperature": params.temperature, "top_p": params.top_p, "top_k": 0} if sampling else {}),
            )
            new_tokens = out[:, enc["input_ids"].shape[1] :].tolist()
            for (i, example), ids, prompt_ids in zip(chunk, new_tokens, enc["input_ids"].tolist()):
                finished = eos in ids
                ids = ids[: ids.index(eos)] if finished else ids
                groups[i].append(Sample(
                    prompt=example.prompt, response=self.tokenizer.decode(ids), answer=example.answer,
                    prompt_ids=[t for t in prompt_ids if t != pad], response_ids=ids, finished=finished,
                    group=i, data_source=example.data_source, extra=example.extra,
                ))
        return groups


class RolloutWorker:
    def __init__(self, model_path: str, engine: str = "hf", device: str = "cpu", threads: int = 1):
        torch.set_num_threads(threads)
        if engine != "hf":
            raise ValueError(f"rollout engine {engine!r} is not available (known: hf)")
        self.engine = HFEngine(model_path, device)

    def generate(self, examples: list[Example], params: SamplingParams) -> list[list[Sample]]:
        return self.engine.generate(examples, params)

    def load_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        self.engine.load_weights(state_dict)
