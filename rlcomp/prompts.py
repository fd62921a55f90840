"""How a prompt meets a model: rendered once, to token ids, by the same rules in every stage and engine.

`PromptSpec` is a recipe's (or a stage's) `prompt:` block:

```yaml
prompt:
  chat_template: auto     # the tokenizer's own template when it has one (default); none: bare text; or a .jinja file
  system: null            # an optional system message
  instruction: "{question}\\nPlease reason step by step, and put your final answer within \\\\boxed{}."
  template_kwargs: {enable_thinking: false}   # passed to the template (a thinking switch, ...)
```
The instruction wraps the question text, replacing the dataset's default wording (`data.prompt_template`);
for a conversational prompt (a list of messages) it wraps the last user message. A model whose tokenizer has no
template (the embedded model) keeps bare prompts.

`PromptRenderer(tokenizer, spec)` turns a prompt (text or messages) into the generation prompt's token ids,
an SFT example into (prompt ids, assistant ids) with the template's end-of-turn token in the assistant part,
and names the tokens that end a turn, which the engines stop at.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

Prompt = str | list[dict[str, Any]]  # text, or messages ({"role": ..., "content": ...}) as TRL/HF datasets hold them
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


class PromptSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    chat_template: str = "auto"  # auto | none | path to a Jinja template file
    system: str | None = None
    instruction: str | None = None  # a format string with {question}; default: the dataset's own wording
    template_kwargs: dict[str, Any] = {}

    @field_validator("chat_template")
    @classmethod
    def _template_exists(cls, v: str) -> str:
        if v not in ("auto", "none") and not Path(v).is_file():
            raise ValueError(f"chat_template must be auto, none or a template file; no file at {v!r}")
        return v

    @field_validator("instruction")
    @classmethod
    def _instruction_formats(cls, v: str | None) -> str | None:
        return check_question_template(v, "instruction")


def check_question_template(v: str | None, field: str, key: str = "question") -> str | None:
    """A format string whose only field is {key}, or a message naming `field` that says how to write one."""
    if v is not None:
        try:
            v.format(**{key: ""})
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"{field} must be a format string using only {{{key}}} (write literal braces "
                             f"as {{{{ }}}}, e.g. \\boxed{{{{}}}}): {e!r}") from None
    return v


CONDITIONS_FILE = "rlcomp_conditions.json"  # in a model directory: the prefixes it was trained under, by name


def save_conditions(model_dir: str | Path, conditions: dict[str, str], default: str) -> None:
    """Record in a saved model the condition prefixes it was trained under (C3oT: long and short), each a
    format string with {question}, and the one to ask it with by default."""
    import json

    from rlcomp.report import write_atomic

    write_atomic(Path(model_dir) / CONDITIONS_FILE, json.dumps({"default": default, "conditions": conditions}) + "\n")


def condition_prefix(model: str | None, condition: str | None = None) -> str | None:
    """The prefix a model's recorded `condition` (default: the model's default) puts around each question;
    None for a model that records none."""
    import json

    path = Path(model or "") / CONDITIONS_FILE
    if not model or not path.is_file():
        if condition is not None:
            raise ValueError(f"condition {condition!r}: the model {model} was trained under no conditions "
                             f"(no {CONDITIONS_FILE})")
        return None
    recorded = json.loads(path.read_text())
    name = condition or recorded["default"]
    if name not in recorded["conditions"]:
        raise ValueError(f"condition {name!r}: the model {model} knows {sorted(recorded['conditions'])}")
    return recorded["conditions"][name]


def apply_condition(examples: list, prefix: str | None) -> list:
    """The examples with each prompt wrapped in a condition prefix (after the stage's own instruction)."""
    from dataclasses import replace

    return examples if prefix is None else [replace(e, prompt=wrap_question(e.prompt, prefix)) for e in examples]


def is_conversational(prompt: Any) -> bool:
    return isinstance(prompt, list) and all(isinstance(m, dict) and "role" in m for m in prompt)


def wrap_question(prompt: Prompt, instruction: str) -> Prompt:
    """The instruction around the question: the text itself, or the last user message of a conversation."""
    if not is_conversational(prompt):
        return instruction.format(question=prompt)
    messages = [dict(m) for m in prompt]
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
    if last_user is None:
        raise ValueError("a conversational prompt has no user message to put the instruction in")
    messages[last_user]["content"] = instruction.format(question=messages[last_user]["content"])
    return messages


class PromptRenderer:
    def __init__(self, tokenizer, spec: PromptSpec | None = None):
        self.tokenizer = tokenizer
        self.spec = spec or PromptSpec()
        if self.spec.chat_template == "auto":
            self.template = getattr(tokenizer, "chat_template", None) or None
        elif self.spec.chat_template == "none":
            self.template = None
        else:
            self.template = Path(self.spec.chat_template).read_text()
        if self.template is None and self.spec.system:
            raise ValueError("prompt.system needs a chat template, and this model's tokenizer has none "
                             "(set prompt.chat_template to a template file)")
        self.stop_ids = sorted({tokenizer.eos_token_id, *([self._end_of_turn()] if self.template else [])} - {None})

    @property
    def templated(self) -> bool:
        return self.template is not None

    def messages(self, prompt: Prompt) -> list[dict[str, Any]]:
        messages = [dict(m) for m in prompt] if is_conversational(prompt) else [{"role": "user", "content": prompt}]
        if self.spec.system and messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": self.spec.system})
        return messages

    def _render(self, messages: list[dict], generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(messages, chat_template=self.template, tokenize=False,
                                                  add_generation_prompt=generation_prompt,
                                                  **self.spec.template_kwargs)

    def text(self, prompt: Prompt) -> str:
        """The generation prompt as text (the template applied, its generation prompt added)."""
        if not self.templated:
            if is_conversational(prompt):
                raise ValueError("a conversational prompt (a list of messages) needs a chat template; this model's "
                                 "tokenizer has none (set prompt.chat_template to a template file)")
            return str(prompt)
        return self._render(self.messages(prompt), generation_prompt=True)

    def ids(self, prompt: Prompt) -> list[int]:
        # The rendered text carries the template's special tokens (BOS included): add none of our own.
        return self.tokenizer(self.text(prompt), add_special_tokens=False)["input_ids"]

    def sft_pair(self, prompt: Prompt, response: str) -> tuple[list[int], list[int]]:
        """(prompt ids, assistant ids) for supervised training: the assistant part is what the template renders
        after the generation prompt, up to and including its end-of-turn token (EOS without a template)."""
        if not self.templated:
            return self.ids(prompt), self.tokenizer(response, add_special_tokens=False)["input_ids"] + [
                self.tokenizer.eos_token_id]
        head = self.text(prompt)
        full = self._render(self.messages(prompt) + [{"role": "assistant", "content": response}], False)
        if not full.startswith(head):
            raise ValueError("the chat template renders the conversation so that it does not start with the "
                             f"generation prompt (prompt ends {head[-40:]!r}, conversation {full[:80]!r}...)")
        tail = self.tokenizer(full[len(head):], add_special_tokens=False)["input_ids"]
        ends = [i for i, t in enumerate(tail) if t in self.stop_ids]
        # What follows the end-of-turn token (a newline) is the next turn's, not the model's to produce.
        return self.ids(prompt), tail[: ends[-1] + 1] if ends else tail + [self.tokenizer.eos_token_id]

    def _end_of_turn(self) -> int | None:
        """The special token the template writes right after an assistant message (<|im_end|>, <|eot_id|>, ...)."""
        marker = "RLCOMP_END_OF_TURN_PROBE"
        text = self._render([{"role": "user", "content": "q"}, {"role": "assistant", "content": marker}], False)
        after = text[text.rindex(marker) + len(marker):] if marker in text else ""
        ids = self.tokenizer(after, add_special_tokens=False)["input_ids"] if after else []
        special = set(self.tokenizer.all_special_ids) | set(getattr(self.tokenizer, "added_tokens_decoder", {}))
        return next((t for t in ids if t in special), None)


def thinking_tokens(tokenizer, prompt_ids: list[int], response_ids: list[int]) -> int | None:
    """How many response tokens are thinking: up to and including `</think>`; all of them when the thinking
    block is open (in the prompt, as R1's template opens it, or in the response) and never closed; None when
    there is no thinking block."""
    text = tokenizer.decode(response_ids, skip_special_tokens=False)
    if THINK_CLOSE not in text:
        opened = THINK_OPEN in text or tokenizer.decode(prompt_ids[-4:], skip_special_tokens=False).rstrip().endswith(
            THINK_OPEN)
        return len(response_ids) if opened else None
    lo, hi = 1, len(response_ids)  # the shortest prefix that contains </think>: decoding is monotone in it
    while lo < hi:
        mid = (lo + hi) // 2
        if THINK_CLOSE in tokenizer.decode(response_ids[:mid], skip_special_tokens=False):
            hi = mid
        else:
            lo = mid + 1
    return lo


def thinking_split(samples, prefix: str = "mean_") -> dict[str, float]:
    """Mean thinking and answer tokens, when the responses have a thinking block (<think>...</think>)."""
    if all(s.thinking_tokens is None for s in samples):
        return {}
    thinking = [s.thinking_tokens or 0 for s in samples]
    return {f"{prefix}thinking_tokens": sum(thinking) / len(samples),
            f"{prefix}answer_tokens": sum(s.length - t for s, t in zip(samples, thinking)) / len(samples)}

