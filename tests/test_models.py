
import pytest
from transformers import AutoModelForCausalLM

from rlcomp.data import TASKS
from rlcomp.models import count_parameters, load_tokenizer, make_tiny_model


def test_tokenizer_round_trips_every_task_text(tiny_model):
    tokenizer = load_tokenizer(tiny_model)  # reloaded through AutoTokenizer, as every engine does
    for name, task in TASKS.items():
        for cot in ("verbose", "terse", "none"):
            for example in task.generate(50, split="train", seed=1, cot=cot):
                for text in (example.prompt, example.response, example.prompt + example.response):
                    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
                    assert len(ids) == len(text), (name, cot, text)  # one token per character
                    assert tokenizer.decode(ids) == text


def test_tokenizer_round_trips_arbitrary_unicode(tiny_model):
    tokenizer = load_tokenizer(tiny_model)
    text = "Solve $\\frac{1}{2}x^2$ = 3 \u2014 caf\u00e9 \U0001f600\n\ttabs  spaces"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert tokenizer.eos_token_id not in ids[:-1] and tokenizer.pad_token_id != tokenizer.eos_token_id


def test_default_model_is_about_a_million_parameters(tmp_path):
    path = make_tiny_model(tmp_path / "m")
    n = count_parameters(AutoModelForCausalLM.from_pretrained(path))
    assert 0.9e6 < n < 1.3e6
    config = AutoModelForCausalLM.from_pretrained(path).config
    assert config.hidden_size // config.num_attention_heads >= 32


def test_head_dim_below_32_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="head_dim"):
        make_tiny_model(tmp_path / "m", hidden_size=64, num_heads=4)
