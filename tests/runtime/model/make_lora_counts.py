"""Writes PEFT's trainable parameter counts for the LoRA count test (lora_count_test.cc).

For each case: a tiny transformers model (no weights are needed, only shapes), wrapped with
peft.get_peft_model for the case's targets and rank. Output per case directory:
  config.json   transformers' own config file (dstrain builds its model from it)
  counts.json   {"rank", "targets" (dstrain's names), "trainable", "total"}
"trainable" is PEFT's get_nb_trainable_parameters(), checked here against the sum of the numels
of the parameters that require a gradient; "total" counts every parameter once (a tied LM head is
the embedding).
"""
import argparse
import json
import os

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

PEFT_MODULES = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj",
                "gate": "gate_proj", "up": "up_proj", "down": "down_proj"}

TARGETS = {"qv": ["q", "v"], "all_linear": ["all-linear"], "mlp": ["gate", "up", "down"]}


def models():
    common = dict(vocab_size=96, num_hidden_layers=2, rms_norm_eps=1e-5,
                  max_position_embeddings=128)
    # head_dim * heads != hidden_size, so q/o shapes differ from a square projection's.
    yield "llama", 8, LlamaForCausalLM, LlamaConfig(
        **common, hidden_size=48, intermediate_size=80, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, tie_word_embeddings=False)
    yield "qwen2_tied", 4, Qwen2ForCausalLM, Qwen2Config(
        **common, hidden_size=64, intermediate_size=96, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=True)


def peft_targets(targets):
    return "all-linear" if targets == ["all-linear"] else [PEFT_MODULES[t] for t in targets]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    for model_name, rank, cls, config in models():
        for targets_name, targets in TARGETS.items():
            out_dir = os.path.join(args.out, model_name + "_" + targets_name)
            os.makedirs(out_dir, exist_ok=True)
            torch.manual_seed(0)
            model = get_peft_model(cls(config), LoraConfig(
                r=rank, lora_alpha=2 * rank, target_modules=peft_targets(targets),
                lora_dropout=0.0, bias="none", task_type="CAUSAL_LM"))
            trainable, total = model.get_nb_trainable_parameters()
            by_flag = sum(p.numel() for p in model.parameters() if p.requires_grad)
            if by_flag != trainable:
                raise SystemExit("%s: get_nb_trainable_parameters %d != requires_grad numels %d"
                                 % (out_dir, trainable, by_flag))
            config.save_pretrained(out_dir)
            with open(os.path.join(out_dir, "counts.json"), "w") as f:
                json.dump({"rank": rank, "targets": targets, "trainable": trainable,
                           "total": total}, f)
            print("%s: r=%d targets=%s trainable %d of %d"
                  % (os.path.basename(out_dir), rank, targets, trainable, total))


if __name__ == "__main__":
    main()
