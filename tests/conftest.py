import os

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def ray_cluster():
    """One real local Ray cluster for the whole session (logical CPUs: actors may share the 2 cores)."""
    import ray

    from rlcomp.cluster import init_ray

    init_ray(num_cpus=8)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A ~0.1M-parameter Qwen2 model with the embedded tokenizer, in Hugging Face format."""
    from rlcomp.models import make_tiny_model

    return str(make_tiny_model(tmp_path_factory.mktemp("tiny") / "model", hidden_size=64, num_layers=2,
                               num_heads=2, intermediate_size=128, max_position_embeddings=256))


CHAT_TEMPLATE = os.path.join(os.path.dirname(__file__), "fixtures", "qwen2.5_chat_template.jinja")


@pytest.fixture(scope="session")
def chat_model(tiny_model, tmp_path_factory):
    """The tiny model with a chat model's tokenizer: Qwen2.5's special tokens and its chat template (plus a
    Qwen3-style thinking switch). EOS stays <|endoftext|>, so the end-of-turn token <|im_end|> is another id."""
    import shutil

    from rlcomp.models import load_tokenizer

    path = tmp_path_factory.mktemp("chat") / "model"
    shutil.copytree(tiny_model, path)
    tokenizer = load_tokenizer(path)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.add_tokens(["<think>", "</think>"])
    tokenizer.chat_template = open(CHAT_TEMPLATE).read()
    tokenizer.save_pretrained(path)
    return str(path)
