"""Builds small tokenizers with Hugging Face `tokenizers` (and `sentencepiece`) and writes the ids
`tokenizers` gives for a varied corpus: the reference tokenizer_test.cc compares dstrain against.

Usage: make_tokenizers.py OUT_DIR. Writes OUT_DIR/<name>/tokenizer.json (or tokenizer.model),
tokenizer_config.json, and OUT_DIR/expected.json:
  {"<name>": {"path": relative to OUT_DIR, "vocab_size": n, "bos": id|null, "eos": id|null,
              "cases": [{"text": ..., "ids": [...]}, ...]}, ...}
A tokenizer whose library is missing is left out of expected.json ("skipped": {name: reason}).
"""
import json
import os
import random
import sys

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from tokenizers import AddedToken

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                  r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+"
                 r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# DeepSeek-V3's chain: three Isolated splits, then ByteLevel without its own regex.
DEEPSEEK_PATTERNS = [
    r"\p{N}{1,3}",
    r"[一-龥\u3040-ゟ゠-ヿ]+",
    r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
]

SCRIPTS = [
    "The quick brown fox jumps over the lazy dog. I'm sure they'll say it's DON'T or WE'VE.",
    "Съешь же ещё этих мягких французских булок, да выпей чаю.",
    "日本語のテキストと漢字、ひらがな、カタカナ。中文文本也在这里。",
    "한국어 문장도 있습니다. العربية نص قصير. हिन्दी वाक्य यहाँ है। Ελληνικά κείμενα.",
    "Emoji: 😀 👍🏽 👩‍💻 🇫🇷 ❤️ 🎉🎉🎉 and symbols ∑ ∞ ≠ → ©®™",
    "Numbers 1234567890, 3.14159, 1,000,000 and 2024-01-31 12:30:45 v1.2.3",
    "def f(x):\n    return {'a': [1, 2, 3], \"b\": x ** 2}  # comment\n\nint main() { return 0; }\n",
    "Whitespace   runs\t\ttabs\n\n\nnewlines\r\nwindows  \n   trailing   ",
    "Caf\u00e9 cafe\u0301 na\u00efve \u00c5ngstr\u00f6m \u212b \ufb01 \u00bd",
]

CORPUS = [
    "",
    " ",
    "hello",
    " hello world",
    "Hello, World!",
    "I'M HERE and You'Re there, it's mine; we'LL see",
    "    indented code\n\tand a tab",
    "a\n\nb\n\n\n\nc  \n  d",
    "line one\r\nline two\r\n",
    "trailing spaces     ",
    "     leading spaces",
    "1 12 123 1234 12345 123456 1234567",
    "3.14159265358979 and -42 and 1e-9 and 0x1F",
    "Съешь же ещё этих мягких французских булок",
    "日本語のテキスト、カタカナ、ひらがな。",
    "中文文本和数字123",
    "한국어 문장",
    "العربية نص",
    "हिन्दी वाक्य",
    "😀😀😀 👍🏽 👩‍💻 🇫🇷 ❤️",
    "emoji🎉inside🎉words",
    "café vs cafe\u0301 and \u212b",
    "nbsp\u00a0here and ideographic\u3000space and nel\u0085x and em\u2003space",
    "<|begin_of_text|>special strings<|end_of_text|> stay text <|im_start|>user",
    "a <tool_call>{\"name\": \"f\"}</tool_call> b",
    "fill  <mask>  in\t<mask>\nand<mask>x <tool_call><tool_call>",
    "x" * 300,
    " " * 200 + "y",
    "abc" * 100,
    "\n" * 50,
    "mixed: αβγ ABC абв 123 !!! ??? ... --- === ###",
    "def f(x):\n    return {'a': [1, 2, 3]}  # comment\n",
    "<html><body class=\"x\">Text &amp; more</body></html>",
    "SELECT * FROM t WHERE id = 42 AND name LIKE '%abc%';",
    "URL https://example.com/path?q=1&r=two#frag and email a.b@c.org",
] + SCRIPTS


def training_text(seed):
    rng = random.Random(seed)
    words = " ".join(SCRIPTS).split()
    lines = list(SCRIPTS) * 20
    for _ in range(3000):
        n = rng.randint(1, 12)
        lines.append(" ".join(rng.choice(words) for _ in range(n)) + rng.choice(["", ".", "\n", "  "]))
        lines.append(str(rng.randint(0, 10**rng.randint(1, 9))))
    return lines


def train_byte_level(split_steps, normalizer=None, vocab_size=2000, digits=None, gpt2=False):
    tok = Tokenizer(models.BPE(ignore_merges=not gpt2))
    steps = list(split_steps)
    if digits is not None:
        steps.append(pre_tokenizers.Digits(individual_digits=digits))
    steps.append(pre_tokenizers.ByteLevel(add_prefix_space=gpt2, use_regex=gpt2))
    tok.pre_tokenizer = pre_tokenizers.Sequence(steps)
    if normalizer is not None:
        tok.normalizer = normalizer
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<|begin_of_text|>", "<|end_of_text|>"])
    tok.train_from_iterator(training_text(len(steps)), trainer=trainer)
    tok.add_special_tokens(["<|im_start|>", "<|im_end|>"])
    tok.add_tokens([AddedToken("<tool_call>", special=False, normalized=False),
                    AddedToken("</tool_call>", special=False, normalized=False),
                    AddedToken("<mask>", special=False, normalized=False, lstrip=True, rstrip=True)])
    return tok


def split(pattern, behavior="isolated", invert=False):
    return pre_tokenizers.Split(Regex(pattern), behavior=behavior, invert=invert)


def save_hf(tok, out, name, bos, eos, legacy_merges=False):
    d = os.path.join(out, name)
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, "tokenizer.json")
    tok.save(path)
    if legacy_merges:  # the older "a b" string form of merges
        with open(path, encoding="utf-8") as f:
            j = json.load(f)
        j["model"]["merges"] = [" ".join(m) for m in j["model"]["merges"]]
        with open(path, "w", encoding="utf-8") as f:
            json.dump(j, f, ensure_ascii=False)
        tok = Tokenizer.from_file(path)
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": bos, "eos_token": {"content": eos, "special": True}}, f)
    tok.encode_special_tokens = True  # special-token strings in the text are text
    return {
        "path": name,
        "vocab_size": tok.get_vocab_size(with_added_tokens=True),
        "bos": tok.token_to_id(bos) if bos else None,
        "eos": tok.token_to_id(eos),
        "im_start": tok.token_to_id("<|im_start|>"),
        "cases": [{"text": t, "ids": tok.encode(t, add_special_tokens=False).ids} for t in CORPUS],
    }


def sentencepiece_case(out, name, model_type):
    import sentencepiece as spm
    from transformers.convert_slow_tokenizer import LlamaConverter

    d = os.path.join(out, name)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "train.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(training_text(7)))
    # Llama 2's settings: identity normalization, byte fallback, digits split, spaces kept.
    spm.SentencePieceTrainer.train(
        input=os.path.join(d, "train.txt"), model_prefix=os.path.join(d, "tokenizer"),
        vocab_size=800, hard_vocab_limit=False, model_type=model_type, byte_fallback=True, split_digits=True,
        normalization_rule_name="identity", remove_extra_whitespaces=False,
        character_coverage=1.0, allow_whitespace_only_pieces=True, minloglevel=2)
    sp = spm.SentencePieceProcessor(model_file=os.path.join(d, "tokenizer.model"))

    class Slow:  # what LlamaConverter reads off LlamaTokenizer
        vocab_file = os.path.join(d, "tokenizer.model")
        legacy = True
        add_prefix_space = True

        def convert_ids_to_tokens(self, i):
            return sp.id_to_piece(i)

    class Converter(LlamaConverter):
        # transformers 5's own extractor passes the scores where it expects a model class;
        # this is its 4.x behaviour: merges ordered by the merged piece's score.
        class SpmExtractor:
            def __init__(self, model_file):
                pass

            def extract(self, vocab_scores):
                from transformers.tokenization_utils_base import generate_merges
                vocab = {w: i for i, (w, _) in enumerate(vocab_scores)}
                return vocab, generate_merges(vocab, vocab_scores)

    tok = Converter(Slow()).converted()
    tok.encode_special_tokens = True
    return {
        "path": os.path.join(name, "tokenizer.model"),
        "vocab_size": sp.get_piece_size(),
        "bos": sp.bos_id(),
        "eos": sp.eos_id(),
        "cases": [{"text": t, "ids": tok.encode(t, add_special_tokens=False).ids} for t in CORPUS],
    }


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    result = {"skipped": {}}
    result["llama3"] = save_hf(train_byte_level([split(LLAMA3_PATTERN)]), out, "llama3",
                               "<|begin_of_text|>", "<|end_of_text|>")
    result["qwen2"] = save_hf(train_byte_level([split(QWEN2_PATTERN)], normalizer=normalizers.NFC()),
                              out, "qwen2", None, "<|im_end|>")
    result["deepseek"] = save_hf(train_byte_level([split(p) for p in DEEPSEEK_PATTERNS]), out,
                                 "deepseek", "<|begin_of_text|>", "<|end_of_text|>")
    result["gpt2_digits"] = save_hf(train_byte_level([], digits=True, gpt2=True), out, "gpt2_digits",
                                    "<|begin_of_text|>", "<|end_of_text|>", legacy_merges=True)
    # Every Split behaviour, inverted ones and a plain-string pattern, under NFKC.
    behaviours = [split(r"\s+", "merged_with_next"), split(r"[.,!?;:]", "merged_with_previous"),
                  split(r"\p{N}", "contiguous"),
                  pre_tokenizers.Split("-", behavior="removed"),
                  split(r"[^\p{L}\p{N} ]", "isolated", invert=True),
                  split(r"\p{Lu}", "merged_with_previous", invert=True)]
    result["behaviours"] = save_hf(train_byte_level(behaviours, normalizer=normalizers.NFKC()),
                                   out, "behaviours", "<|begin_of_text|>", "<|end_of_text|>")
    for name, kind in [("spm_bpe", "bpe"), ("spm_unigram", "unigram")]:
        try:
            result[name] = sentencepiece_case(out, name, kind)
        except ImportError as e:
            result["skipped"][name] = f"{e}"
    with open(os.path.join(out, "expected.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, ensure_ascii=False)


if __name__ == "__main__":
    main()
