"""Reference renderings for chat_template_test: transformers' apply_chat_template(tokenize=False,
add_generation_prompt=False) over the conversations below, for each chat format dstrain knows.
The tokenizer is a tiny `tokenizers` model carrying the format's special tokens, with the format's
Jinja template set on it (the templates of Meta Llama 3 Instruct, Qwen2 Instruct and DeepSeek LLM
chat). The tokenizer is a small byte-level BPE trained here with the format's special tokens.
Writes <out>/conversations.jsonl (one record per line, as `dstrain prepare --format chat` reads
them), <out>/expected.json ({format: [rendered text per line]}), <out>/<format>/tokenizer.json and
<out>/expected_ids.json ({format: [ids of the rendered text per line]}, special-token strings as
their ids, as Hugging Face tokenizes a rendered chat)."""
import argparse
import json
import os

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

CHATML = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

DEEPSEEK = (
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ 'User: ' + message['content'] + '\n\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ 'Assistant: ' + message['content'] + eos_token }}"
    "{% elif message['role'] == 'system' %}{{ message['content'] + '\n\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

FORMATS = {
    "llama3": (LLAMA3, "<|begin_of_text|>", "<|eot_id|>",
               ["<|start_header_id|>", "<|end_header_id|>"]),
    "chatml": (CHATML, None, "<|im_end|>", ["<|im_start|>"]),
    "deepseek": (DEEPSEEK, "<\uff5cbegin\u2581of\u2581sentence\uff5c>",
                 "<\uff5cend\u2581of\u2581sentence\uff5c>", []),
}

RECORDS = [
    {"messages": [{"role": "user", "content": "Hello"},
                  {"role": "assistant", "content": "Hi there!"}]},
    {"messages": [{"role": "system", "content": "You are terse."},
                  {"role": "user", "content": "2+2?"},
                  {"role": "assistant", "content": "4"}]},
    {"messages": [{"role": "system", "content": "Be kind."},
                  {"role": "user", "content": "First question"},
                  {"role": "assistant", "content": "First answer."},
                  {"role": "user", "content": "Second\nquestion, two lines"},
                  {"role": "assistant", "content": "Second answer\n\nwith a paragraph."}]},
    {"messages": [{"role": "user", "content": "Привет, 世界! 🙂 café"},
                  {"role": "assistant", "content": "नमस्ते — ok ✓ 🎉"}]},
    # Llama 3's template trims content (Python's str.strip, Unicode spaces included).
    {"messages": [{"role": "user", "content": "  padded\t\n"},
                  {"role": "assistant", "content": "\u3000 spaced out \u00a0\n"}]},
    {"prompt": "Translate to French: cheese", "completion": " fromage"},
    {"messages": [{"role": "user", "content": "code?"},
                  {"role": "assistant", "content": "def f(x):\n    return x * 2\n"}],
     "id": 7, "source": "other fields are ignored"},
    {"messages": [{"role": "user", "content": ""},
                  {"role": "assistant", "content": "empty prompt"}]},
]


def messages_of(record):
    if "messages" in record:
        return record["messages"]
    return [{"role": "user", "content": record["prompt"]},
            {"role": "assistant", "content": record["completion"]}]


def tokenizer_for(template, bos, eos, extra):
    specials = [t for t in [bos, eos] + extra if t]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, show_progress=False, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = [json.dumps(r, ensure_ascii=False) for r in RECORDS] * 4
    corpus += ["User: Assistant: system user assistant You are a helpful assistant."] * 8
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos)
    fast.chat_template = template
    return fast


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "conversations.jsonl"), "w", encoding="utf-8") as f:
        for record in RECORDS:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    expected = {}
    expected_ids = {}
    for name, (template, bos, eos, extra) in FORMATS.items():
        tok = tokenizer_for(template, bos, eos, extra)
        texts = [tok.apply_chat_template(messages_of(r), tokenize=False,
                                         add_generation_prompt=False) for r in RECORDS]
        expected[name] = texts
        expected_ids[name] = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
        os.makedirs(os.path.join(args.out, name), exist_ok=True)
        tok.backend_tokenizer.save(os.path.join(args.out, name, "tokenizer.json"))
    with open(os.path.join(args.out, "expected.json"), "w", encoding="utf-8") as f:
        json.dump(expected, f, ensure_ascii=False, indent=1)
    with open(os.path.join(args.out, "expected_ids.json"), "w", encoding="utf-8") as f:
        json.dump(expected_ids, f)


if __name__ == "__main__":
    main()
