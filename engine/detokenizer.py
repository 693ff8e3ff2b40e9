"""Incremental detokenization and stop-string matching for the frontend.

`IncrementalDetokenizer` turns a growing list of token ids into text that only ever grows: each
call returns the newly stable text. It decodes a small window of previous tokens together with
the new ones and returns the difference, so tokenizers whose decode depends on context (leading
spaces of SentencePiece pieces, byte-level BPE pieces that are fragments of one UTF-8 character)
come out right. Text that ends in U+FFFD (an incomplete multi-byte character) is held back until a
later token completes it, or until `flush()` at the end of the sequence.

`StopChecker` finds stop strings in the text as it grows and says how many trailing characters a
streaming caller must hold back because they could be the beginning of a stop string.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

# Prompt tokens decoded as left context for the first output tokens (as in vLLM).
_PROMPT_CONTEXT = 5
_REPLACEMENT = "\ufffd"


class IncrementalDetokenizer:
    """Decodes one sequence's output tokens incrementally.

    Invariant: `_ids[_prefix:_read]` is the context window whose decoded text `_prefix_text`
    has already been returned (in full, or as earlier context); tokens `_ids[_read:]` are not yet
    reflected in returned text. Tokens before `_prefix` are dropped, so memory stays small.
    Decoding never cleans up tokenization spaces, so the concatenation of everything returned
    (plus `flush()`) equals the decode of prompt + output minus the decode of the prompt, for a
    prompt that ends on a character boundary.
    """

    def __init__(self, tokenizer: Any, prompt_token_ids: Sequence[int],
                 skip_special_tokens: bool = True, spaces_between_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self._kwargs: dict[str, Any] = {"skip_special_tokens": skip_special_tokens,
                                        "clean_up_tokenization_spaces": False}
        if not spaces_between_special_tokens:
            # Only slow (python) tokenizers look at this; fast ones join pieces directly.
            self._kwargs["spaces_between_special_tokens"] = False
        # A fast tokenizer's Rust backend decodes the same text without the Python wrapper's
        # per-call argument handling (about half of a streamed token's detokenization cost);
        # cleanup is off either way, and the backend handles added/special tokens itself.
        backend = getattr(tokenizer, "_tokenizer", None)
        self._fast = None
        if (getattr(tokenizer, "is_fast", False) and hasattr(backend, "decode")
                and spaces_between_special_tokens):
            self._fast = backend.decode
        self._skip_special = skip_special_tokens
        self._ids: list[int] = list(prompt_token_ids[-_PROMPT_CONTEXT:])
        self._prefix = 0
        self._read = len(self._ids)
        self._prefix_text = self._decode(self._ids)

    def _decode(self, ids: list[int]) -> str:
        if not ids:
            return ""
        if self._fast is not None:
            return self._fast(ids, skip_special_tokens=self._skip_special)
        return self.tokenizer.decode(ids, **self._kwargs)

    @property
    def has_pending(self) -> bool:
        """True when some appended tokens are not yet reflected in returned text."""
        return self._read < len(self._ids)

    def append(self, new_token_ids: Sequence[int]) -> str:
        """Add output tokens; return the text that became stable (may be "").

        Tokens are taken one at a time so that complete characters before an incomplete one at
        the end of a multi-token delta are still returned now.
        """
        pieces = []
        for t in new_token_ids:
            self._ids.append(t)
            pieces.append(self._advance(force=False))
        return "".join(pieces)

    def flush(self) -> str:
        """Return whatever is still held back (even a trailing U+FFFD): call once at the end."""
        return self._advance(force=True) if self.has_pending else ""

    def _advance(self, force: bool) -> str:
        new_text = self._decode(self._ids[self._prefix:])
        if not force and (len(new_text) <= len(self._prefix_text)
                          or new_text.endswith(_REPLACEMENT)):
            # Nothing visible yet (special token skipped) or a character is still incomplete.
            return ""
        delta = new_text[len(self._prefix_text):]
        # The new window starts at the first token not covered by the old window's text.
        del self._ids[:self._read]
        self._prefix, self._read = 0, len(self._ids)
        self._prefix_text = self._decode(self._ids)
        return delta


def decode_all(tokenizer: Any, prompt_token_ids: Sequence[int], token_ids: Sequence[int],
               skip_special_tokens: bool = True,
               spaces_between_special_tokens: bool = True) -> str:
    """The text `IncrementalDetokenizer` would produce for `token_ids` appended at once + flush."""
    detok = IncrementalDetokenizer(tokenizer, prompt_token_ids, skip_special_tokens,
                                   spaces_between_special_tokens)
    return detok.append(token_ids) + detok.flush()


def find_stop_string(text: str, new_chars: int,
                     stop_strs: Sequence[str]) -> Optional[tuple[int, str]]:
    """Earliest stop string occurrence that overlaps the last `new_chars` characters of `text`.

    Only matches ending inside the new text are considered (older text was checked before), so
    each stop string is searched from `len(text) - new_chars - len(stop) + 1`. Returns
    (start index, stop string) or None; on equal starts the earlier stop in the list wins.
    """
    if new_chars <= 0:
        return None
    old_len = len(text) - new_chars
    best: Optional[tuple[int, str]] = None
    for stop in stop_strs:
        i = text.find(stop, max(0, old_len - len(stop) + 1))
        if i >= 0 and (best is None or i < best[0]):
            best = (i, stop)
    return best


def partial_stop_len(text: str, stop_strs: Sequence[str]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of some stop string."""
    hold = 0
    for stop in stop_strs:
        for n in range(min(len(stop) - 1, len(text)), hold, -1):
            if text.endswith(stop[:n]):
                hold = n
                break
    return hold


class StopChecker:
    """Stop-string logic for one sequence: matching, truncation and streaming hold-back."""

    def __init__(self, stop_strs: Sequence[str], include_stop_str_in_output: bool = False):
        self.stop_strs = list(stop_strs)
        self.include_stop_str_in_output = include_stop_str_in_output

    def check(self, text: str, new_chars: int) -> Optional[tuple[str, int]]:
        """If a stop string appears (overlapping the new text), return (stop string, length the
        text must be truncated to): up to its start, or its end when it is kept in the output."""
        if not self.stop_strs:
            return None
        found = find_stop_string(text, new_chars, self.stop_strs)
        if found is None:
            return None
        start, stop = found
        return stop, start + len(stop) if self.include_stop_str_in_output else start

    def hold_back(self, text: str) -> int:
        """Trailing characters to withhold from a streaming client while unfinished.

        Zero with include_stop_str_in_output: a stop string would end up in the output anyway.
        """
        if not self.stop_strs or self.include_stop_str_in_output:
            return 0
        return partial_stop_len(text, self.stop_strs)
