"""Incremental detokenization: pieces pushed a few tokens at a time add up to the whole decode,
for byte-level tokenizers (characters split across tokens) and SentencePiece-style ones (a
leading space dropped at the start of a decode)."""

import random

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from tokentree.text import TextStream


def byte_level_tokenizer():
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    backend = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend)


def metaspace_tokenizer():
    pieces = ["<unk>"] + [f"\u2581{c}" for c in "abcdef"] + list("abcdef.,") + ["\u2581"]
    backend = Tokenizer(
        models.BPE(vocab={p: i for i, p in enumerate(pieces)}, merges=[], unk_token="<unk>")
    )
    backend.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")


def text_of_bytes_tokens(tokenizer, text):
    return tokenizer(text, add_special_tokens=False).input_ids


@pytest.mark.parametrize("seed", range(4))
def test_byte_level_pieces_add_up_to_the_whole_decode(seed):
    tokenizer = byte_level_tokenizer()
    rng = random.Random(seed)
    words = ["naïve", "日本語", "😀", "tree", " ", "\n", "é", "∑x"]
    ids = text_of_bytes_tokens(tokenizer, "".join(rng.choice(words) for _ in range(60)))
    stream, pieces, i = TextStream(tokenizer), [], 0
    while i < len(ids):
        k = rng.randint(1, 5)
        piece = stream.push(ids[i : i + k])
        assert "\ufffd" not in piece  # a character split across steps is held back until complete
        pieces.append(piece)
        i += k
    pieces.append(stream.finish())
    assert "".join(pieces) == tokenizer.decode(ids) == stream.text


@pytest.mark.parametrize("seed", range(4))
def test_sentencepiece_style_pieces_keep_their_spaces(seed):
    tokenizer = metaspace_tokenizer()
    rng = random.Random(seed)
    ids = [rng.randrange(1, 16) for _ in range(80)]
    stream, pieces, i = TextStream(tokenizer), [], 0
    while i < len(ids):
        k = rng.randint(1, 4)
        pieces.append(stream.push(ids[i : i + k]))
        i += k
    pieces.append(stream.finish())
    assert "".join(pieces) == tokenizer.decode(ids)


def test_each_step_decodes_only_the_new_tokens():
    calls = []

    class Counting:
        def decode(self, ids, skip_special_tokens=True):
            calls.append(len(ids))
            return "".join(chr(97 + i % 26) for i in ids)

    stream = TextStream(Counting())
    for step in range(200):
        stream.push([step, step + 1])
    assert len(stream.text) == 400
    assert max(calls[-10:]) <= 8  # a few tokens of context plus the new ones, not the whole output


def test_stop_prefix_at_end_equals_trying_every_prefix():
    import random

    from tokentree.text import stop_prefix_at_end

    def every_prefix(text, stop):
        return max((k for k in range(1, len(stop)) if text.endswith(stop[:k])), default=0)

    rng = random.Random(0)
    for _ in range(5000):
        text = "".join(rng.choice("ab") for _ in range(rng.randint(0, 12)))
        stop = "".join(rng.choice("ab") for _ in range(rng.randint(1, 8)))
        assert stop_prefix_at_end(text, stop) == every_prefix(text, stop), (text, stop)


def test_a_long_stop_string_costs_about_its_length_per_step():
    import time

    from tokentree.text import stop_prefix_at_end

    stop = "ab" * 100_000  # trying every prefix would compare ~10^10 characters
    start = time.perf_counter()
    assert stop_prefix_at_end("xx" + "ab" * 50 + "a", stop) == 101
    assert time.perf_counter() - start < 1.0
