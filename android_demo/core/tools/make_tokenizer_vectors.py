"""Build tokenizer.json files of the shapes the phone tokenizers support and their test vectors.

    python android_demo/core/tools/make_tokenizer_vectors.py OUT_DIR [--cases N]

Each shape is a tiny BPE model trained here with the ``tokenizers`` library and then dressed in the
pipeline of a real model family:

- ``gpt2``:     byte-level BPE, ByteLevel pre-tokenizer with GPT-2's regex and add_prefix_space;
- ``llama3``:   byte-level BPE, Split with Llama-3's regex + ByteLevel, ignore_merges, BOS template;
- ``llama2``:   SentencePiece-style BPE (Llama-2 / TinyLlama): Prepend + Replace normalizers,
                byte fallback ``<0xNN>``, fuse_unk, decoder Replace/ByteFallback/Fuse/Strip;
- ``gemma``:    SentencePiece-style BPE (Gemma): Replace normalizer, byte fallback, ``<bos>``;
- ``metaspace``: Metaspace pre-tokenizer and decoder (prepend_scheme "first", split), no byte
                fallback, fuse_unk;
- ``preset``:   the tokenizer every loragen preset directory carries (models.build_tokenizer()).

For each, OUT_DIR/NAME.tokenizer.json and OUT_DIR/NAME.vectors.json: N random strings with the
ids ``Tokenizer.encode`` gives (with and without special tokens), ``decode(ids)`` with and without
skipping special tokens, or ``"error": true`` where the library refuses the string (lone
surrogates); plus random id sequences with their decoded text. JSON is written ASCII-escaped so
lone surrogates survive. Deterministic for a given --seed.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# character pools for the random strings
WHITESPACE = [" ", " ", " ", "  ", "   ", "\n", "\n\n", "\t", "\r\n", "\r", "\u00a0", "\u2003", "\u3000", "\u0085",
              "\u1680", "\u2028", "\u2029", "\u000b", "\u000c", "\u001c", "\u001f", "\u200b", "\u202f"]
ASCII_WORDS = ["hello", "world", "the", "The", "HELLO", "it's", "I'M", "we'll", "they're", "don't", "you've",
               "she'd", "'S", "'ll", "123", "4567", "3.14", "x=1", "foo_bar", "a,b", "(ok)", "--", "...", "!!",
               "#tag", "@user", "https://example.com/a?b=c", "{\"k\": [1, 2]}", "def f(x):", "ſ", "'ſ", "K"]
ACCENTED = "éèêëàâäçñöüßøåæœÉÀÇÑÖÜíóúýÿłżźćńśğışăâîșțđčšžőű"
COMBINING = [chr(c) for c in range(0x300, 0x370)] + ["\u0651", "\u093f", "\u20dd", "\ufe0f", "\u200d"]
CJK = "你好世界中文字符測試日本語のテキストです한국어텍스트"
OTHER_SCRIPTS = "Привет мир Γειά σου κόσμε مرحبا بالعالم नमस्ते दुनिया שלום עולם สวัสดี ქართული"
DIGITS = "0123456789٠١٢٣٤٥٦٧٨٩０１２３４５६७⁴½Ⅻ"
SYMBOLS = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~¡¿§©®°±µ¶·×÷€£¥•…‰™←→∑√∞≠≤≥■□▲●★♥♪✓✗"
EMOJI = ["😀", "👍", "👍🏽", "❤️", "🇫🇷", "🇯🇵", "👨‍👩‍👧‍👦", "👩🏾‍💻", "🏳️‍🌈", "🧑‍🚀", "1️⃣", "🐍", "🤖", "🫠"]
MISC = ["\ufffd", "\u0000", "\u0001", "\u007f", "\u00ad", "\ufeff", "\uffff", "\U0001d49c", "\U00020000", "▁",
        "▁▁", " ▁", "<0x41>", "<0xZZ>", "<unk>", "<", ">", "</", "s>"]
SURROGATES = ["\ud800", "\udfff", "\udc00x", "a\ud83d", "\ude00b"]


def random_text(rng: random.Random, specials: list[str]) -> str:
    n = rng.choice([0, 1, 1, 2, 3, 4, 5, 6, 8, 10, 14, 20])
    parts = []
    for _ in range(n):
        r = rng.random()
        if r < 0.22:
            parts.append(rng.choice(WHITESPACE))
        elif r < 0.45:
            parts.append(rng.choice(ASCII_WORDS))
        elif r < 0.52:
            parts.append("".join(rng.choice(ACCENTED) for _ in range(rng.randint(1, 4))))
        elif r < 0.57:
            parts.append(rng.choice("aeiouxyz") + "".join(rng.choice(COMBINING) for _ in range(rng.randint(1, 3))))
        elif r < 0.63:
            parts.append("".join(rng.choice(CJK) for _ in range(rng.randint(1, 5))))
        elif r < 0.68:
            start = rng.randrange(len(OTHER_SCRIPTS))
            parts.append(OTHER_SCRIPTS[start:start + rng.randint(1, 12)])
        elif r < 0.73:
            parts.append("".join(rng.choice(DIGITS) for _ in range(rng.randint(1, 6))))
        elif r < 0.79:
            parts.append("".join(rng.choice(SYMBOLS) for _ in range(rng.randint(1, 3))))
        elif r < 0.85:
            parts.append(rng.choice(EMOJI))
        elif r < 0.90:
            parts.append(rng.choice(specials))
        elif r < 0.955:
            parts.append(rng.choice(MISC))
        elif r < 0.96:
            parts.append(rng.choice(SURROGATES))
        else:
            parts.append(chr(rng.randint(0x20, 0x2FF)))
    # a high + low surrogate that end up adjacent are one character in a UTF-16 (Kotlin/Java) string
    return "".join(parts).encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")


def corpus(rng: random.Random) -> list[str]:
    base = [
        "The quick brown fox jumps over the lazy dog.", "Hello world! It's a test, isn't it?",
        "We'll see what they're doing in 2024 and 1999.", "def main(args):\n    return 0\n",
        "Привет мир, как дела?", "你好世界，这是一个测试。", "Café crème brûlée à la française.",
        "User: weather in Paris?\nAssistant: sunny, 21 degrees.", "  indented   text\twith\ttabs  ",
    ]
    return base * 30 + [random_text(rng, ["x"]).encode("utf-8", "replace").decode("utf-8") for _ in range(300)]


def train_bpe(pre_tokenizer, vocab_size: int, alphabet: list[str] | None, limit_alphabet: int | None,
              rng: random.Random) -> tuple[dict[str, int], list[tuple[str, str]]]:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizer
    kw = {"initial_alphabet": alphabet} if alphabet else {}
    if limit_alphabet:
        kw["limit_alphabet"] = limit_alphabet
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False, **kw)
    tok.train_from_iterator(corpus(rng), trainer=trainer)
    m = json.loads(tok.to_str())["model"]
    return m["vocab"], [tuple(x.split(" ", 1)) if isinstance(x, str) else tuple(x) for x in m["merges"]]


def byte_level(rng: random.Random, llama3: bool) -> tuple[Tokenizer, list[str]]:
    if llama3:
        pre = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ])
        specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]
    else:
        pre = pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True)
        specials = ["<|endoftext|>"]
    trained, merges = train_bpe(pre, 700, pre_tokenizers.ByteLevel.alphabet(), None, rng)
    vocab = {t: i for i, t in enumerate(sorted(trained, key=trained.get))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=llama3))
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    tok.add_tokens([AddedToken("<tool_call>", special=False, normalized=False)])
    if llama3:
        tok.post_processor = processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A $B",
                                          special_tokens=[("<|begin_of_text|>", tok.token_to_id("<|begin_of_text|>"))]),
        ])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=True)
    return tok, specials + ["<tool_call>"]


def sentencepiece(rng: random.Random, shape: str) -> tuple[Tokenizer, list[str]]:
    meta = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    trained, merges = train_bpe(meta, 600, None, 90, rng)
    bos = "<bos>" if shape == "gemma" else "<s>"
    eos = "<eos>" if shape == "gemma" else "</s>"
    specials = (["<pad>", eos, bos, "<unk>"] if shape == "gemma" else ["<unk>", bos, eos])
    vocab: dict[str, int] = {s: i for i, s in enumerate(specials)}
    if shape != "metaspace":
        for b in range(256):
            vocab[f"<0x{b:02X}>"] = len(vocab)
    for t in sorted(trained, key=trained.get):
        vocab.setdefault(t, len(vocab))
    byte_fallback = shape != "metaspace"
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=byte_fallback,
                               fuse_unk=True))
    if shape == "llama2":
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Strip(" ", 1, 0)])
    elif shape == "gemma":
        tok.normalizer = normalizers.Replace(" ", "▁")
        tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    else:
        tok.pre_tokenizer = meta
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    extra = ["<start_of_turn>", "<end_of_turn>"] if shape == "gemma" else ["[INST]"]
    tok.add_tokens([AddedToken(extra[0], special=False, normalized=False)])
    # a normalized added token: matched after the normalizer (so "good day" is found as "good▁day")
    tok.add_tokens([AddedToken("good day", special=False, normalized=True)])
    if len(extra) > 1:
        tok.add_special_tokens([AddedToken(extra[1], special=True, normalized=False)])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, tok.token_to_id(bos))])
    return tok, specials + extra + ["good day", "good  day"]


def preset() -> tuple[Tokenizer, list[str]]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
    from loragen_mobile.models import SPECIAL_TOKENS, build_tokenizer

    return Tokenizer.from_str(build_tokenizer().backend_tokenizer.to_str()), list(SPECIAL_TOKENS)


def cases(tok: Tokenizer, specials: list[str], n: int, rng: random.Random) -> list[dict]:
    out = []
    for _ in range(n):
        s = random_text(rng, specials)
        try:
            ids = tok.encode(s).ids
        except TypeError:  # the library takes only valid Unicode (no lone surrogates)
            out.append({"text": s, "error": True})
            continue
        out.append({
            "text": s,
            "ids": ids,
            "ids_plain": tok.encode(s, add_special_tokens=False).ids,
            "decoded": tok.decode(ids),
            "decoded_all": tok.decode(ids, skip_special_tokens=False),
        })
    size = tok.get_vocab_size(with_added_tokens=True)
    for _ in range(max(n // 10, 10)):
        ids = [rng.randrange(size + 2) for _ in range(rng.randint(0, 12))]  # a few unknown ids too
        out.append({"ids": ids, "decoded": tok.decode(ids), "decoded_all": tok.decode(ids, skip_special_tokens=False)})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--cases", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    shapes = {
        "gpt2": lambda: byte_level(rng, llama3=False),
        "llama3": lambda: byte_level(rng, llama3=True),
        "llama2": lambda: sentencepiece(rng, "llama2"),
        "gemma": lambda: sentencepiece(rng, "gemma"),
        "metaspace": lambda: sentencepiece(rng, "metaspace"),
        "preset": preset,
    }
    for name, make in shapes.items():
        tok, specials = make()
        (out / f"{name}.tokenizer.json").write_text(tok.to_str(), encoding="utf-8")
        vectors = {"name": name, "cases": cases(tok, specials, args.cases, rng)}
        (out / f"{name}.vectors.json").write_text(json.dumps(vectors, ensure_ascii=True), encoding="ascii")
    (out / "shapes.txt").write_text("\n".join(shapes) + "\n")
    print(f"tokenizer vectors: {len(shapes)} shapes x {args.cases} strings -> {out}")


if __name__ == "__main__":
    main()
