"""Helper of tokenizer_bench.sh: builds the corpus and tokenizer, times Hugging Face `tokenizers`,
and checks dstrain's token file against it.

  tokenizer_bench.py setup DIR MB          corpus files DIR/corpus/*.txt, tokenizer DIR/tok/
  tokenizer_bench.py hf DIR THREADS        prints {"seconds": s, "bytes": n, "tokens": t}
  tokenizer_bench.py check DIR FILE.dstok  prints {"equal": bool} (ids, bos/eos per file)
"""
import glob
import json
import os
import random
import re
import sys
import time

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                  r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
FILE_BYTES = 1 << 20


def corpus_files(d):
    return sorted(glob.glob(os.path.join(d, "corpus", "*.txt")))


def setup(d, mb):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    # Real prose and code: the Python sources and docs installed in this venv, with lines of other
    # scripts mixed in, cut into 1 MiB files.
    import tokenizers
    root = os.path.dirname(os.path.dirname(tokenizers.__file__))
    sources = sorted(glob.glob(os.path.join(root, "**", "*.py"), recursive=True))
    sources += sorted(glob.glob(os.path.join(root, "**", "*.md"), recursive=True))
    rng = random.Random(0)
    rng.shuffle(sources)
    other = ["Съешь же ещё этих мягких французских булок, да выпей чаю.",
             "日本語のテキストと漢字、ひらがな、カタカナ。中文文本也在这里。",
             "한국어 문장도 있습니다. العربية نص قصير. हिन्दी वाक्य यहाँ है।",
             "Emoji 😀 👍🏽 👩‍💻 🇫🇷 and numbers 1234567 3.14159"]
    os.makedirs(os.path.join(d, "corpus"), exist_ok=True)
    want = mb * 1000 * 1000
    written, index, buf = 0, 0, []
    size = 0
    for path in sources:
        if written >= want:
            break
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except (UnicodeDecodeError, OSError):
            continue
        text += "\n" + rng.choice(other) + "\n"
        buf.append(text)
        size += len(text.encode())
        if size >= FILE_BYTES:
            data = "".join(buf)
            with open(os.path.join(d, "corpus", f"{index:05d}.txt"), "w", encoding="utf-8") as f:
                f.write(data)
            written += len(data.encode())
            index, buf, size = index + 1, [], 0
    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=32000, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<|begin_of_text|>", "<|end_of_text|>"])
    tok.train(corpus_files(d)[:20], trainer=trainer)
    os.makedirs(os.path.join(d, "tok"), exist_ok=True)
    tok.save(os.path.join(d, "tok", "tokenizer.json"))
    with open(os.path.join(d, "tok", "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"}, f)


def chunks(text, size=4096):
    """`text` cut after a line break followed by a non-space character, every `size` characters
    or so: `tokenizers` is faster on such pieces than on 1 MiB strings, and with the Llama 3
    pattern no pre-token crosses these points, so the ids are the whole file's."""
    cut = re.compile(r"\n(?=[^ \t\r\n])")
    out, pos = [], 0
    while pos < len(text):
        m = cut.search(text, pos + size)
        end = m.end() if m else len(text)
        out.append(text[pos:end])
        pos = end
    return out


def texts(d):
    out = []
    for p in corpus_files(d):
        with open(p, encoding="utf-8") as f:
            out.append(f.read())
    return out


def hf(d, threads):
    os.environ["RAYON_NUM_THREADS"] = str(threads)
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(os.path.join(d, "tok", "tokenizer.json"))
    tok.encode_special_tokens = True
    docs = texts(d)
    pieces = [c for t in docs for c in chunks(t)]
    start = time.perf_counter()
    enc = tok.encode_batch(pieces, add_special_tokens=False)
    secs = time.perf_counter() - start
    print(json.dumps({"seconds": secs, "bytes": sum(len(t.encode()) for t in docs),
                      "tokens": sum(len(e.ids) for e in enc)}))


def check(d, dstok):
    import numpy as np
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(os.path.join(d, "tok", "tokenizer.json"))
    tok.encode_special_tokens = True
    bos, eos = tok.token_to_id("<|begin_of_text|>"), tok.token_to_id("<|end_of_text|>")
    want = []
    for t in texts(d):
        want.append(bos)
        for e in tok.encode_batch(chunks(t), add_special_tokens=False):
            want += e.ids
        want.append(eos)
    raw = open(dstok, "rb").read()
    header = np.frombuffer(raw[:64], dtype=np.uint8)
    token_bytes = int(header[12:16].view("<u4")[0])
    n = int(header[24:32].view("<u8")[0])
    got = np.frombuffer(raw[64:64 + n * token_bytes], dtype="<u2" if token_bytes == 2 else "<u4")
    print(json.dumps({"equal": got.tolist() == want, "tokens": n}))


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "setup":
        setup(sys.argv[2], int(sys.argv[3]))
    elif cmd == "hf":
        hf(sys.argv[2], int(sys.argv[3]))
    else:
        check(sys.argv[2], sys.argv[3])
