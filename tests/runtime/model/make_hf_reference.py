"""Writes Hugging Face transformers reference outputs for the model parity test.

For each case: a tiny random-weight model built from a transformers config (fp32, eager
attention, seeded), a forward on fixed token ids, and the backward of the mean next-token
cross-entropy. Output per case directory:
  config.json     transformers' own config file
  manifest.json   {"tensors": {name: {"file", "dtype" ("f32"|"i64"), "shape"}}}
  *.bin           raw little-endian tensor data
Tensor names: "input_ids", "logits", "loss", "param:<hf name>", "grad:<hf name>".
LoRA cases wrap the model with PEFT (adapters randomised so every gradient is non-trivial), write
lora.json ({"rank", "alpha", "rslora", "targets"}) and name PEFT's tensors as the plain model would
(no "base_model.model." prefix, ".base_layer" or ".default"); frozen tensors have no "grad:".
"""
import argparse
import json
import os

import numpy as np
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM,
                          Qwen2Config, Qwen2ForCausalLM)

BATCH = 2
SEQ = 24


def cases():
    common = dict(vocab_size=96, num_hidden_layers=2, rms_norm_eps=1e-5,
                  max_position_embeddings=256)
    yield "llama3_gqa", LlamaForCausalLM, LlamaConfig(
        **common, hidden_size=48, intermediate_size=80, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, mlp_bias=True,
        rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, factor=8.0,
                             low_freq_factor=1.0, high_freq_factor=4.0,
                             original_max_position_embeddings=64))
    yield "qwen2_tied", Qwen2ForCausalLM, Qwen2Config(
        **common, hidden_size=64, intermediate_size=96, num_attention_heads=4,
        num_key_value_heads=1, tie_word_embeddings=True,
        rope_parameters=dict(rope_type="default", rope_theta=1000000.0))
    yield "mistral_sliding", MistralForCausalLM, MistralConfig(
        **common, hidden_size=64, intermediate_size=96, num_attention_heads=4,
        num_key_value_heads=2, sliding_window=8,
        rope_parameters=dict(rope_type="default", rope_theta=10000.0))
    yield "llama_yarn", LlamaForCausalLM, LlamaConfig(
        **{**common, "max_position_embeddings": 128}, hidden_size=64, intermediate_size=96,
        num_attention_heads=4, num_key_value_heads=4, attention_bias=True,
        rope_parameters=dict(rope_type="yarn", rope_theta=10000.0, factor=4.0,
                             original_max_position_embeddings=32, beta_fast=32.0, beta_slow=1.0))
    yield "llama_linear", LlamaForCausalLM, LlamaConfig(
        **common, hidden_size=64, intermediate_size=96, num_attention_heads=4,
        num_key_value_heads=2,
        rope_parameters=dict(rope_type="linear", rope_theta=10000.0, factor=2.0))
    yield "llama_dynamic", LlamaForCausalLM, LlamaConfig(
        **{**common, "max_position_embeddings": 16}, hidden_size=64, intermediate_size=96,
        num_attention_heads=4, num_key_value_heads=2,
        rope_parameters=dict(rope_type="dynamic", rope_theta=10000.0, factor=2.0))


def lora_cases():
    common = dict(vocab_size=96, num_hidden_layers=2, rms_norm_eps=1e-5,
                  max_position_embeddings=256)
    yield "llama_lora", LlamaForCausalLM, LlamaConfig(
        **common, hidden_size=48, intermediate_size=80, num_attention_heads=4,
        num_key_value_heads=2, rope_parameters=dict(rope_type="default", rope_theta=10000.0)), \
        dict(rank=4, alpha=8.0, rslora=False, targets=["q", "v", "o", "gate", "down"])
    yield "qwen2_lora_rslora", Qwen2ForCausalLM, Qwen2Config(
        **common, hidden_size=64, intermediate_size=96, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=True,
        rope_parameters=dict(rope_type="default", rope_theta=1000000.0)), \
        dict(rank=8, alpha=16.0, rslora=True, targets=["all-linear"])


PEFT_MODULES = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj",
                "gate": "gate_proj", "up": "up_proj", "down": "down_proj"}


def plain_name(peft_name):
    return (peft_name.replace("base_model.model.", "", 1).replace(".base_layer", "")
            .replace(".default", ""))


class Writer:
    def __init__(self, out_dir):
        self.out_dir = out_dir
        self.tensors = {}

    def add(self, name, tensor):
        t = tensor.detach().cpu().contiguous()
        if t.dtype == torch.int64:
            dtype, arr = "i64", t.numpy().astype("<i8")
        else:
            dtype, arr = "f32", t.to(torch.float32).numpy().astype("<f4")
        file = "t%03d.bin" % len(self.tensors)
        arr.tofile(os.path.join(self.out_dir, file))
        self.tensors[name] = {"file": file, "dtype": dtype, "shape": list(t.shape)}

    def finish(self):
        with open(os.path.join(self.out_dir, "manifest.json"), "w") as f:
            json.dump({"tensors": self.tensors}, f, indent=1)


def randomize(model, gen):
    # Non-trivial norms and biases, and weights large enough that logits are O(1).
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "norm" in name:
                p.copy_(1.0 + 0.1 * noise)
            elif name.endswith(".bias"):
                p.copy_(0.1 * noise)
            else:
                p.copy_(0.08 * noise)


def run_case(out_root, name, model_cls, config, seed, lora=None):
    out_dir = os.path.join(out_root, name)
    os.makedirs(out_dir, exist_ok=True)
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = model_cls(config).to(torch.float32)
    model.config._attn_implementation = "eager"
    gen = torch.Generator().manual_seed(seed)
    randomize(model, gen)
    if lora is not None:
        targets = ("all-linear" if lora["targets"] == ["all-linear"]
                   else [PEFT_MODULES[t] for t in lora["targets"]])
        model = get_peft_model(model, LoraConfig(r=lora["rank"], lora_alpha=lora["alpha"],
                                                 target_modules=targets, lora_dropout=0.0,
                                                 use_rslora=lora["rslora"], bias="none"))
        with torch.no_grad():
            for pname, p in model.named_parameters():
                if "lora_" in pname:
                    p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    model.train()  # dropout is 0; gradients flow as in training
    ids = torch.randint(0, config.vocab_size, (BATCH, SEQ), generator=gen)

    logits = model(input_ids=ids).logits
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, config.vocab_size), ids[:, 1:].reshape(-1))
    loss.backward()

    model.config.save_pretrained(out_dir)
    w = Writer(out_dir)
    w.add("input_ids", ids)
    w.add("logits", logits)
    w.add("loss", loss)
    for pname, p in model.named_parameters():
        w.add("param:" + plain_name(pname), p)
        if p.grad is not None:
            w.add("grad:" + plain_name(pname), p.grad)
    w.finish()
    if lora is not None:
        with open(os.path.join(out_dir, "lora.json"), "w") as f:
            json.dump(lora, f)
    print("%s: loss %.6f, |logits|max %.3f" % (name, loss.item(), logits.abs().max().item()))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    for i, (name, cls, cfg) in enumerate(cases()):
        run_case(args.out, name, cls, cfg, seed=1000 + i)
    for i, (name, cls, cfg, lora) in enumerate(lora_cases()):
        run_case(args.out, name, cls, cfg, seed=2000 + i, lora=lora)


if __name__ == "__main__":
    main()
