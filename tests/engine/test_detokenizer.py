from __future__ import annotations

import random

import pytest

from engine.detokenizer import (IncrementalDetokenizer, StopChecker, decode_all,
                                find_stop_string, partial_stop_len)
from tests.engine._tokenizers import gpt2_tokenizer, smollm2_tokenizer

FFFD = "\ufffd"


@pytest.fixture(scope="module", params=["gpt2", "smollm2"])
def tok(request):
    return gpt2_tokenizer() if request.param == "gpt2" else smollm2_tokenizer()


def run_incremental(tok, prompt_ids, out_ids, skip=True, seed=0):
    """Feed `out_ids` in random chunks; return the pieces (flush last)."""
    rng = random.Random(seed)
    detok = IncrementalDetokenizer(tok, prompt_ids, skip_special_tokens=skip)
    pieces, i = [], 0
    while i < len(out_ids):
        n = rng.choice([1, 1, 1, 2, 3])
        pieces.append(detok.append(out_ids[i:i + n]))
        i += n
    pieces.append(detok.flush())
    return pieces


@pytest.mark.parametrize("skip", [True, False])
def test_random_tokens_match_full_decode(tok, skip):
    rng = random.Random(1)
    prompt = tok.encode("The quick brown fox says:")
    vocab = len(tok)
    for trial in range(30):
        out = [rng.randrange(vocab) for _ in range(rng.randrange(1, 40))]
        pieces = run_incremental(tok, prompt, out, skip, seed=trial)
        full = tok.decode(prompt + out, skip_special_tokens=skip)
        assert tok.decode(prompt, skip_special_tokens=skip) + "".join(pieces) == full
        # Nothing but the final flush may end inside a character.
        assert not any(p.endswith(FFFD) for p in pieces[:-1])


MULTIBYTE = " Hi 😀 世界! ünïcödé 🎉🎉 naïve 日本語のテキスト 👩‍👩‍👧 end"


def test_multibyte_text_is_never_split(tok):
    prompt = tok.encode("Say:")
    out = tok.encode(MULTIBYTE)
    pieces = run_incremental(tok, prompt, out)
    assert "".join(pieces) == MULTIBYTE
    assert all(FFFD not in p for p in pieces)
    # Some characters really do span tokens in both vocabularies.
    assert any(FFFD in tok.decode([t]) for t in out)


def test_leading_spaces_and_first_token(tok):
    prompt = tok.encode("Hello")
    out = tok.encode(" world, and  two  spaces")
    detok = IncrementalDetokenizer(tok, prompt)
    pieces = [detok.append([t]) for t in out]
    assert pieces[0] == " world"
    assert "".join(pieces) + detok.flush() == " world, and  two  spaces"


def test_empty_prompt_and_special_tokens():
    tok = smollm2_tokenizer()
    im_start, im_end = tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    out = [im_start] + tok.encode("assistant\nHi there") + [im_end]
    assert decode_all(tok, [], out, skip_special_tokens=True) == "assistant\nHi there"
    kept = decode_all(tok, [], out, skip_special_tokens=False)
    assert kept == "<|im_start|>assistant\nHi there<|im_end|>"
    assert "".join(run_incremental(tok, [], out, skip=False)) == kept


def test_flush_returns_incomplete_tail_once(tok):
    prompt = tok.encode("x")
    ids = tok.encode("😀")
    assert len(ids) > 1
    detok = IncrementalDetokenizer(tok, prompt)
    assert detok.append(ids[:1]) == ""
    assert detok.has_pending
    tail = detok.flush()
    assert tail.endswith(FFFD)
    assert detok.flush() == ""


def test_find_stop_string_only_in_new_region():
    assert find_stop_string("hello world", 5, ["world"]) == (6, "world")
    assert find_stop_string("hello world", 1, ["world"]) == (6, "world")  # completed by "d"
    # "hello" lies wholly in old text: not a new match.
    assert find_stop_string("hello world", 5, ["hello"]) is None
    assert find_stop_string("abcabc", 3, ["c", "ab"]) == (3, "ab")
    assert find_stop_string("abc", 0, ["c"]) is None
    # Earliest start wins; equal starts go to the first listed.
    assert find_stop_string("xx STOP", 7, ["STOP", " ST"]) == (2, " ST")
    assert find_stop_string("xx STOP", 7, ["ST", "STOP"]) == (3, "ST")


def test_partial_stop_len():
    assert partial_stop_len("hello wor", ["world"]) == 3
    assert partial_stop_len("hello w", ["world", "hello w!"]) == 7
    assert partial_stop_len("hello", ["world"]) == 0
    assert partial_stop_len("aaa", ["aab"]) == 2
    assert partial_stop_len("", ["x"]) == 0


def test_stop_checker_truncation_and_hold_back():
    chk = StopChecker(["\n\n", "END"])
    assert chk.check("one\n\ntwo", 4) == ("\n\n", 3)
    assert chk.hold_back("one\n") == 1
    assert chk.hold_back("the EN") == 2
    keep = StopChecker(["END"], include_stop_str_in_output=True)
    assert keep.check("the END is near", 12) == ("END", 7)
    assert keep.hold_back("the EN") == 0
    assert StopChecker([]).check("anything", 8) is None


@pytest.mark.parametrize("skip", [True, False])
def test_fast_backend_decode_equals_the_wrapper(tok, skip):
    """The Rust-backend shortcut gives the text the transformers wrapper gives (specials too)."""
    rng = random.Random(11)
    special = list(tok.all_special_ids)
    for _ in range(20):
        ids = [rng.choice(special) if rng.random() < 0.1 else rng.randrange(len(tok))
               for _ in range(40)]
        fast = IncrementalDetokenizer(tok, ids[:3], skip)
        slow = IncrementalDetokenizer(tok, ids[:3], skip)
        slow._fast = None
        assert fast._fast is not None
        a = "".join(fast.append([t]) for t in ids[3:]) + fast.flush()
        b = "".join(slow.append([t]) for t in ids[3:]) + slow.flush()
        assert a == b
