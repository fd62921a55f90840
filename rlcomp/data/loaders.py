"""`DataSpec` (the `data:` block of a recipe) and `load_examples`, which turns it into `Example`s.

Sources: a synthetic task, a known benchmark file format (gsm8k, math500, aime, amc) read from a local path,
a generic .jsonl/.parquet file, a Hugging Face dataset name (loaded only when used), or the samples an earlier
`sample` stage of the run wrote (`from_stage`, with a `select`ion such as the shortest correct per prompt). Generic rows may be
conversational as TRL and HF datasets are: `prompt` a list of messages (with `completion` a list holding the
assistant message), or `messages` a whole conversation whose last message is the assistant's response.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator, Literal

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from rlcomp.data.synthetic import TASKS
from rlcomp.prompts import PromptSpec, check_question_template, is_conversational, wrap_question
from rlcomp.sample import Example

MATH_TEMPLATE = "{question}\nPlease reason step by step, and put your final answer within \\boxed{{}}."
# GSM8K's gold solutions end in `#### N`, which the gsm8k verifier reads; ask for the same (verl's wording).
GSM8K_TEMPLATE = "{question}\nLet's think step by step and output the final answer after \"####\"."
FORMATS = ("gsm8k", "math500", "aime", "amc")
ALIASES = {"aime24": "aime", "aime25": "aime", "amc23": "amc"}  # the folder names under shared/data
QUESTION_KEYS = ("question", "problem", "prompt", "input", "messages")
ANSWER_KEYS = ("answer", "solution", "output")
RESPONSE_KEYS = ("response", "solution", "completion")


def file_format(dataset: str) -> str | None:
    """The known file format a dataset name stands for, or None."""
    name = ALIASES.get(dataset, dataset)
    return name if name in FORMATS else None


def verifier_for(data_source: str) -> str:
    """Default verifier for an `Example.data_source`: a synthetic task checks itself, benchmarks use math/gsm8k."""
    if data_source in TASKS:
        return data_source
    return "gsm8k" if file_format(data_source) == "gsm8k" else "math"


SELECTIONS = ("shortest_correct", "all_correct", "random_correct", "all")


class DataSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset: str = ""  # a task, benchmark or hub name; may be left out with `from_stage`
    from_stage: str | None = None  # read the samples.jsonl of this earlier `sample` stage of the run
    select: Literal["shortest_correct", "all_correct", "random_correct", "all"] = "all"  # per prompt, of `from_stage`
    path: str | None = None
    split: str = "train"
    n: int | None = None
    seed: int = 0
    cot: Literal["verbose", "terse", "none"] = "verbose"
    prompt_template: str | None = None
    question_key: str | None = None
    answer_key: str | None = None
    response_key: str | None = None
    options: dict = {}
    verifier: str | None = None

    @field_validator("path")
    @classmethod
    def _path_exists(cls, v: str | None) -> str | None:
        if v is not None and not Path(v).exists():
            raise ValueError(f"data file not found: {v}")
        return v

    @field_validator("prompt_template")
    @classmethod
    def _template_formats(cls, v: str | None) -> str | None:
        return check_question_template(v, "prompt_template")

    @model_validator(mode="after")
    def _source(self) -> DataSpec:
        if not self.dataset and not self.from_stage:
            raise ValueError("give `dataset` (a task, a benchmark or hub name) or `from_stage` (an earlier sample stage)")
        if self.select != "all" and not self.from_stage:
            raise ValueError(f"select: {self.select} picks among an earlier stage's samples: it needs `from_stage`")
        return self

    @model_validator(mode="after")
    def _format_needs_path(self) -> DataSpec:
        if file_format(self.dataset) and self.path is None:
            raise ValueError(f"dataset {self.dataset!r} needs a local `path` to its .jsonl/.parquet file "
                             f"(there is no hub access), e.g. path: ../shared/data/{self.dataset}/test.jsonl")
        return self

    def default_verifier(self) -> str:
        return self.verifier or verifier_for(self.dataset)


def load_examples(spec: DataSpec, prompt: PromptSpec | None = None) -> list[Example]:
    """The examples a spec describes, in a deterministic order (files: their own order, capped at n).
    A prompt spec's `instruction` replaces the dataset's wording of the question (`prompt_template`)."""
    if spec.from_stage:  # prompts as the sampling stage rendered them: no template is applied again
        if spec.path is None:
            raise ValueError(f"from_stage {spec.from_stage}: the run gives the file's path (Run.data_spec)")
        return select_samples(read_samples(spec.path), spec)
    if prompt is not None and prompt.instruction:
        spec = spec.model_copy(update={"prompt_template": prompt.instruction})
    if spec.dataset in TASKS:
        examples = TASKS[spec.dataset].generate(spec.n or 1000, spec.split, spec.seed, spec.cot, **spec.options)
        if spec.prompt_template:
            for e in examples:
                e.prompt = spec.prompt_template.format(question=e.prompt)
        return examples
    if spec.path is None:
        source, rows = spec.dataset, _hf_rows(spec)
    else:
        if spec.options:
            raise ValueError(f"options {spec.options} are not used by file datasets")
        source = _resolve(spec)
        rows = _file_rows(source)
    convert = _CONVERTERS.get(file_format(spec.dataset), _generic)
    examples = []
    for line, row in rows:
        if spec.n is not None and len(examples) >= spec.n:
            break
        try:
            examples.append(convert(spec, row, line))
        except KeyError as e:
            raise ValueError(f"{source}:{line}: missing key {e.args[0]!r}; keys present: {sorted(row)}") from None
        except ValueError as e:
            raise ValueError(f"{source}:{line}: {e}") from None
    return examples


def read_samples(path: str | Path) -> dict[str, list[dict]]:
    """A `sample` stage's samples.jsonl: its rows grouped by prompt id, in file order."""
    by_prompt: dict[str, list[dict]] = {}
    for line, row in _file_rows(Path(path)):
        missing = [k for k in ("id", "prompt", "response", "answer", "tokens", "correct") if k not in row]
        if missing:
            raise ValueError(f"{path}:{line}: not a sample stage's row: missing {', '.join(missing)}")
        by_prompt.setdefault(row["id"], []).append(row)
    return by_prompt


def select_samples(by_prompt: dict[str, list[dict]], spec: DataSpec) -> list[Example]:
    """A `sample` stage's rows (several responses per prompt) -> examples whose gold response is the selection:
    per prompt the shortest correct (Kimi's shortest rejection sampling), every correct one, one correct one at
    random (seeded), or every row. Prompts with no correct sample are left out by the correct-only selections."""
    import random

    rng = random.Random(spec.seed)
    examples = []
    for pid, group in by_prompt.items():
        correct = [r for r in group if r["correct"]]
        if spec.select == "shortest_correct":
            chosen = [min(correct, key=lambda r: r["tokens"])] if correct else []
        elif spec.select == "random_correct":
            chosen = [rng.choice(correct)] if correct else []
        else:
            chosen = correct if spec.select == "all_correct" else group
        examples += [Example(prompt=r["prompt"], answer=r["answer"], response=r["response"], id=pid,
                             data_source=r.get("data_source", spec.dataset), extra=r.get("extra", {}))
                     for r in chosen]
    return examples[: spec.n] if spec.n is not None else examples


def _resolve(spec: DataSpec) -> Path:
    """A directory path holds one file per split (e.g. gsm8k/train.jsonl), so `split` picks it."""
    path = Path(spec.path)
    if path.is_dir():
        for ext in (".jsonl", ".parquet"):
            if (path / f"{spec.split}{ext}").exists():
                return path / f"{spec.split}{ext}"
        raise ValueError(f"no {spec.split}.jsonl or {spec.split}.parquet in {path}")
    return path


def _file_rows(path: Path) -> Iterator[tuple[int, dict]]:
    """(line or row number from 1, row) pairs of a .jsonl or .parquet file."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        yield from enumerate(pq.read_table(path).to_pylist(), start=1)
        return
    with open(path, encoding="utf-8") as f:
        for line, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{line}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{line}: expected a JSON object, got {type(row).__name__}")
            yield line, row


def _hf_rows(spec: DataSpec) -> Iterator[tuple[int, dict]]:
    import datasets  # heavy, and only needed for hub names

    ds = datasets.load_dataset(spec.dataset, split=spec.split, **spec.options)
    return enumerate(ds, start=1)


def _first_key(row: dict, override: str | None, candidates: tuple[str, ...]) -> str:
    if override is not None:
        if override not in row:
            raise KeyError(override)
        return override
    for key in candidates:
        if key in row:
            return key
    raise KeyError(" or ".join(candidates))


def _answer_str(value: Any) -> str:
    """Answers as strings: integral floats lose their `.0` (AMC stores 27.0) and zero-padding goes (AIME '025')."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = str(value).strip()
    return str(int(text)) if text.isascii() and text.isdigit() else text


def _prompt(spec: DataSpec, question, default: str):
    """The question in the dataset's wording; a conversation is left as it is unless a template is asked for."""
    template = spec.prompt_template or (None if is_conversational(question) else default)
    return wrap_question(question, template) if template else question


def _content(value) -> str:
    """A response column's text: a string, or the assistant message of a conversational completion."""
    if is_conversational(value):
        assistant = [m for m in value if m["role"] == "assistant"]
        if not assistant:
            raise ValueError("the completion has no assistant message")
        return str(assistant[-1]["content"])
    return str(value)


def _gsm8k(spec: DataSpec, row: dict, line: int) -> Example:
    solution = row["answer"]
    if "####" not in solution:
        raise ValueError("answer has no '#### <number>' line")
    body, final = solution.rsplit("####", 1)
    # Drop the <<48/2=24>> calculator annotations: they are tool markup, not reasoning a model should imitate.
    response = re.sub(r"<<[^>]*>>", "", body).rstrip() + f"\n#### {final.strip()}"
    return Example(prompt=_prompt(spec, row["question"], GSM8K_TEMPLATE), answer=final.strip().replace(",", ""),
                   response=response, id=str(row.get("id", f"{spec.dataset}-{line}")), data_source=spec.dataset,
                   extra=dict(row))


def _math(spec: DataSpec, row: dict, line: int) -> Example:
    """math500, aime and amc: a problem (or question), an answer and, when present, a worked solution."""
    question = row[_first_key(row, spec.question_key, ("problem", "question"))]
    answer = _answer_str(row["answer"])
    solution = str(row.get("solution") or "")
    # aime25's `solution` is only the answer again: not a response worth training on.
    response = "" if _answer_str(solution) == answer else solution
    rid = row.get("unique_id", row.get("id", f"{spec.dataset}-{line}"))
    return Example(prompt=_prompt(spec, question, MATH_TEMPLATE), answer=answer, response=response, id=str(rid),
                   data_source=spec.dataset, extra=dict(row))


def _generic(spec: DataSpec, row: dict, line: int) -> Example:
    q = _first_key(row, spec.question_key, QUESTION_KEYS)
    a = _first_key(row, spec.answer_key, ANSWER_KEYS)
    answer = _answer_str(row[a])
    if "####" in answer:  # a GSM8K-style solution: the answer is what follows ####
        answer = answer.rsplit("####", 1)[1].strip().replace(",", "")
    question, response = row[q], ""
    if q == "messages":  # a whole conversation: the last message is the response to the ones before it
        if not is_conversational(question) or not question or question[-1]["role"] != "assistant":
            raise ValueError("`messages` must be a list of {role, content} ending with an assistant message")
        question, response = question[:-1], str(question[-1]["content"])
    elif not is_conversational(question):
        if isinstance(question, list):
            raise ValueError(f"`{q}` is a list but not of {{role, content}} messages")
        question = str(question)
    r = spec.response_key or next((k for k in RESPONSE_KEYS if k in row and k != a), None)
    if r is not None and not response:
        response = _content(row[r])
    return Example(prompt=_prompt(spec, question, MATH_TEMPLATE), answer=answer, response=response,
                   id=str(row.get("id", f"{spec.dataset}-{line}")), data_source=spec.dataset,
                   extra=dict(row))


_CONVERTERS = {"gsm8k": _gsm8k, "math500": _math, "aime": _math, "amc": _math}
