"""The embedded model: a small Qwen2/Llama-architecture model made from a config, with a local tokenizer.

No model hub is needed: the tokenizer is character-level (printable ASCII), built here and saved in Hugging
Face format next to the weights, so transformers, vLLM and every rlcomp engine load the directory as usual.
"""
from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

PAD, EOS = "<|pad|>", "<|endoftext|>"  # Qwen2Tokenizer adds <|endoftext|> unless present


def build_char_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer with no merges: one token per byte, so one per character of ASCII text.

    It is a byte-level BPE (as Qwen2's and Llama 3's are) because transformers rebuilds a Qwen2 model's
    tokenizer as its own byte-level class whatever tokenizer.json says; with an empty merge list that rebuild
    keeps exactly this vocabulary and behaviour, and any UTF-8 text round-trips.
    """
    byte_chars = list(pre_tokenizers.ByteLevel.alphabet())
    byte_chars.sort(key=lambda c: _BYTE_OF_CHAR[c])
    vocab = {tok: i for i, tok in enumerate([PAD, EOS, *byte_chars])}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token=PAD, eos_token=EOS, bos_token=None,
        padding_side="left", clean_up_tokenization_spaces=False,
    )


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map used by byte-level tokenizers."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


_BYTE_OF_CHAR = {c: b for b, c in _bytes_to_unicode().items()}


def make_tiny_model(
    output_dir: str | Path,
    architecture: str = "qwen2",
    hidden_size: int = 128,
    num_layers: int = 4,
    num_heads: int = 4,
    num_kv_heads: int | None = None,
    intermediate_size: int = 512,
    max_position_embeddings: int = 1024,
    seed: int = 0,
) -> Path:
    """Create a randomly initialised model + tokenizer in Hugging Face format and return its directory."""
    if architecture not in ("qwen2", "llama"):
        raise ValueError(f"architecture: expected 'qwen2' or 'llama', got {architecture!r}")
    if hidden_size % num_heads or hidden_size // num_heads < 32:
        raise ValueError("hidden_size / num_heads must be an integer >= 32 (vLLM's CPU attention needs head_dim >= 32)")
    tokenizer = build_char_tokenizer()
    config = AutoConfig.for_model(
        architecture,
        vocab_size=64 * -(-len(tokenizer) // 64),  # rounded up: room for added tokens
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads or num_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    output_dir = Path(output_dir)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return output_dir


def load_tokenizer(model: str | Path):
    tokenizer = AutoTokenizer.from_pretrained(str(model))
    if tokenizer.pad_token is None:  # many base models ship without one
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def decoder_layers(model) -> list[torch.nn.Module]:
    """The transformer blocks (FSDP2 shards one unit per block), through a peft wrapper if there is one."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return list(base.model.layers)
