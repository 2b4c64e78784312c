"""Writes tiny Hugging Face checkpoints with transformers' save_pretrained, plus reference outputs.

Cases (one directory each under --out):
  llama_sharded  LlamaForCausalLM, llama3 rope scaling, untied, fp32, split into
                 model-0000x-of-0000y.safetensors + model.safetensors.index.json
  qwen2_bf16     Qwen2ForCausalLM, tied embeddings, bf16, one model.safetensors
  mistral_fp16   MistralForCausalLM, sliding window, fp16, one model.safetensors
Each directory also gets reference.safetensors: "input_ids" (I64 [B, T]), "logits" (F32
[B, T, V]) and "loss" (F32 [], mean next-token cross-entropy), computed in fp32 by transformers
from exactly the weights written (the bf16/fp16 values widened to fp32).
"""
import argparse
import glob
import os

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM,
                          Qwen2Config, Qwen2ForCausalLM)

BATCH = 2
SEQ = 20


def cases():
    common = dict(vocab_size=96, num_hidden_layers=2, rms_norm_eps=1e-5,
                  max_position_embeddings=256)
    yield "llama_sharded", LlamaForCausalLM, LlamaConfig(
        **common, hidden_size=48, intermediate_size=80, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, tie_word_embeddings=False,
        rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, factor=8.0,
                             low_freq_factor=1.0, high_freq_factor=4.0,
                             original_max_position_embeddings=64)), torch.float32, "40KB"
    yield "qwen2_bf16", Qwen2ForCausalLM, Qwen2Config(
        **common, hidden_size=64, intermediate_size=96, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=True,
        rope_parameters=dict(rope_type="default", rope_theta=1000000.0)), torch.bfloat16, None
    yield "mistral_fp16", MistralForCausalLM, MistralConfig(
        **common, hidden_size=64, intermediate_size=96, num_attention_heads=4,
        num_key_value_heads=2, sliding_window=8, tie_word_embeddings=False,
        rope_parameters=dict(rope_type="default", rope_theta=10000.0)), torch.float16, None


def randomize(model, gen):
    # Non-trivial norms and biases, weights large enough that logits are O(1).
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "norm" in name:
                p.copy_(1.0 + 0.1 * noise)
            elif name.endswith(".bias"):
                p.copy_(0.1 * noise)
            else:
                p.copy_(0.08 * noise)


def run_case(out_root, name, model_cls, config, dtype, max_shard_size, seed):
    out_dir = os.path.join(out_root, name)
    os.makedirs(out_dir, exist_ok=True)
    for old in glob.glob(os.path.join(out_dir, "*.safetensors*")):
        os.remove(old)
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = model_cls(config).to(torch.float32)
    gen = torch.Generator().manual_seed(seed)
    randomize(model, gen)
    model = model.to(dtype)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(out_dir, **kwargs)

    # The reference is transformers loading what it wrote: casting the model back instead would
    # keep the rotary inv_freq buffer rounded to bf16/fp16 by the cast above.
    model = model_cls.from_pretrained(out_dir, dtype=torch.float32,
                                      attn_implementation="eager").eval()
    ids = torch.randint(0, config.vocab_size, (BATCH, SEQ), generator=gen)
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, config.vocab_size), ids[:, 1:].reshape(-1))
    save_file({"input_ids": ids.contiguous(), "logits": logits.contiguous(),
               "loss": loss.reshape(()).contiguous()},
              os.path.join(out_dir, "reference.safetensors"))
    files = sorted(f for f in os.listdir(out_dir) if f.startswith("model"))
    print("%s: loss %.6f, files %s" % (name, loss.item(), files))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    for i, (name, cls, cfg, dtype, shard) in enumerate(cases()):
        run_case(args.out, name, cls, cfg, dtype, shard, seed=2000 + i)


if __name__ == "__main__":
    main()
