"""CCoT's decoder given the gold chain: psi (a LoRA adapter, as the `ccot` stage's) trained and evaluated on the
input model's own hidden states at the k = ceil(r m) evenly spaced chain positions, at the input of every decoder
layer, instead of the states phi makes. Its accuracy is the most a perfect contemplator could give psi at this r:
whether the decoder reads the chain when it is there (the README's "CCoT on 2-digit multiplication").

    python docs/ccot_gold_decoder.py MODEL --r 0.25 --steps 3000 --task multiplication --options '{"digits": 2}'

Accuracy is exact match of the teacher-forced argmax over the answer and EOS, which is what greedy decoding gives.
Training: Adam, lr 1e-3, batches of 32 drawn at random from the training problems (seed 21, as the README's runs),
fp32 on CPU.
"""
import argparse
import json
import random
import time

import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from rlcomp.data import DataSpec, load_examples
from rlcomp.latent import layer_inputs, positions
from rlcomp.losses.ccot import gold_batch
from rlcomp.models import load_tokenizer
from rlcomp.prompts import PromptRenderer
from rlcomp.stages import ccot


def gold_states(model, rows, pad: int, layers: int) -> list:
    """Per row [k, L, D]: the frozen model's inputs of decoder layers 1..L at the row's gold chain positions (the
    stage's own gold pass, `gold_batch`, psi's LoRA zeroed)."""
    gold = gold_batch(model, ccot.phi_batch(rows, 0, 0, pad))
    return [gold[b, : row.k, :layers] for b, row in enumerate(rows)]


def answer_logits(model, rows, pad: int, layers: int) -> list:
    """Per row: psi's logits at the positions that predict its answer tokens (EOS included)."""
    batch = ccot.decode_batch(rows, gold_states(model, rows, pad, layers), pad)
    with layer_inputs(model, batch["ccot_at"], batch["ccot_valid"], batch["ccot_states"]):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       position_ids=positions(batch["attention_mask"]), use_cache=False).logits
    starts = [len(row.prompt) + row.k - 1 for row in rows]
    return [logits[b, s : s + len(row.answer)] for b, (s, row) in enumerate(zip(starts, rows))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--r", type=float, required=True)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--task", default="multiplication")
    parser.add_argument("--options", type=json.loads, default={"digits": 2})
    parser.add_argument("--train", type=int, default=30000)
    parser.add_argument("--test", type=int, default=600)
    parser.add_argument("--out", help="write the result here as JSON")
    args = parser.parse_args()

    torch.manual_seed(0)
    tokenizer = load_tokenizer(args.model)
    pad = tokenizer.pad_token_id
    cfg = ccot.Config(name="gold", r=args.r, data=DataSpec(dataset=args.task, split="train", n=args.train,
                                                           cot="terse", seed=21, options=args.options))
    renderer = PromptRenderer(tokenizer, cfg.prompt)
    rows, _ = ccot.prepare(load_examples(cfg.data, cfg.prompt), tokenizer, renderer, cfg, "gold")
    test_data = DataSpec(dataset=args.task, split="test", n=args.test, cot="terse", options=args.options)
    test, _ = ccot.prepare(load_examples(test_data, cfg.prompt), tokenizer, renderer, cfg, "gold")
    model = AutoModelForCausalLM.from_pretrained(args.model, torch_dtype=torch.float32)
    layers = model.config.num_hidden_layers
    model = get_peft_model(model, LoraConfig(r=cfg.psi_lora.r, lora_alpha=cfg.psi_lora.alpha,
                                             target_modules="all-linear"))

    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    rng, started, log = random.Random(0), time.time(), []
    model.train()
    for step in range(args.steps):
        batch = rng.sample(rows, 32)
        logits = torch.cat(answer_logits(model, batch, pad, layers))
        loss = F.cross_entropy(logits, torch.tensor([t for row in batch for t in row.answer]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 250 == 0 or step == args.steps - 1:
            log.append((step, loss.item()))
            print(f"step {step} loss {loss.item():.4f} [{time.time() - started:.0f}s]", flush=True)

    model.eval()
    right = 0
    with torch.no_grad():
        for start in range(0, len(test), 50):
            batch = test[start : start + 50]
            right += sum(lg.argmax(-1).tolist() == row.answer
                         for row, lg in zip(batch, answer_logits(model, batch, pad, layers)))
    result = {"r": args.r, "steps": args.steps, "accuracy": right / len(test), "n": len(test),
              "mean_k": sum(row.k for row in test) / len(test), "loss": log}
    print(json.dumps({k: v for k, v in result.items() if k != "loss"}))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f)


if __name__ == "__main__":
    main()
