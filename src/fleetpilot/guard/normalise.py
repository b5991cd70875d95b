"""Undo what hides an attack from a matcher, so every later layer sees the plain text.

An attacker who knows a guard matches "ignore previous instructions" writes it with a
zero-width space inside a word, with Cyrillic letters that look Latin, in fullwidth or
mathematical letters, spaced out letter by letter, in leetspeak, or not at all: base64, hex,
rot13, URL-encoding, or Unicode tag characters that render as nothing.  :func:`clean` undoes
what can be undone without changing an honest text (NFKC, confusables, invisible characters);
:func:`variants` adds the decodings, each as its own text to check, because applying them to
every text would turn honest prose into noise.

Every step is a C-speed ``str`` operation or one regex pass, so a 16,000-character prompt
is cleaned in well under a millisecond.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import re
import unicodedata
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import re2

__all__ = ["Variant", "clean", "merge_windows", "nfkc", "runs", "variants"]

# Characters that render as nothing or reorder text: zero-width spaces and joiners, word
# joiner and invisible operators, the byte-order mark, soft hyphen, Mongolian vowel separator,
# and the bidirectional controls (embeddings, overrides, isolates, marks).
_INVISIBLE = dict.fromkeys(
    [0x00AD, 0x180E, 0xFEFF, *range(0x200B, 0x2010), *range(0x202A, 0x202F),
     *range(0x2060, 0x2065), *range(0x2066, 0x206A)]
)  # fmt: skip

# Letters that NFKC leaves alone but that look Latin: Cyrillic and Greek homoglyphs (the
# common part of Unicode's confusables list that attacks use).
_CONFUSABLE_PAIRS = (
    "аa еe оo рp сc уy хx іi јj ѕs ԁd һh ӏl ԛq ԝw ѵv ɡg "
    "АA ВB ЕE КK МM НH ОO РP СC ТT ХX ІI ЈJ ЅS "
    "αa οo ρp ιi κk νv τt υu χx ΑA ΒB ΕE ΖZ ΗH ΙI ΚK ΜM ΝN ΟO ΡP ΤT ΥY ΧX"
)
_CONFUSABLES = {ord(p[0]): p[1] for p in _CONFUSABLE_PAIRS.split()}
_CLEAN = {**_INVISIBLE, **_CONFUSABLES}
_CLEAN_ANY = re2.compile(
    "[" + "".join(map(chr, _CLEAN)) + "]+"
)  # RE2: an automaton, faster than re

# Unicode tag characters (U+E0020..U+E007E) mirror printable ASCII and render as nothing:
# text written in them is read by a model and seen by no one.
_TAGS = re.compile("[\U000e0020-\U000e007e]+")
_TAG_ANY = re2.compile("[\U000e0000-\U000e007f]")

_LEET = bytes.maketrans(b"013457@$!|+", b"oieastasilt")
_ROT13 = bytes.maketrans(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
    b"NOPQRSTUVWXYZABCDEFGHIJKLMnopqrstuvwxyzabcdefghijklm",
)
# letters one by one with one separator between: "i g n o r e", "i.g.n.o.r.e"; words apart by
# two or more ("i g n o r e   a l l")
_SPACED_BYTES = re.compile(rb"(?<![A-Za-z0-9_])(?:[A-Za-z][ .\-_*]){2,}[A-Za-z](?![A-Za-z0-9_])")
_SEPARATOR_BYTES = re.compile(rb"[ .\-_*]")
_BASE64 = re.compile(r"(?:[A-Za-z0-9+/]{4}){4,}(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")
_BASE64_URL = re.compile(r"[A-Za-z0-9_-]{20,}={0,2}")
_HEX = re.compile(r"(?:(?:\\x|0x)?[0-9A-Fa-f]{2}[ :]?){8,}")
_PERCENT = re.compile(r"%[0-9A-Fa-f]{2}")


def _flags(*classes: tuple[int, str]) -> bytes:
    """A bytes.translate table from each byte to the bits of the classes it is in."""
    table = bytearray(256)
    for bit, chars in classes:
        for c in chars.encode():
            table[c] |= bit
    return bytes(table)


_B64_BIT, _HEX_BIT, _HEXISH_BIT, _LETTER_BIT, _SEP_BIT, _LEET_BIT = 1, 2, 4, 8, 16, 32
_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_FLAGS = _flags(
    (_B64_BIT, _LETTERS + "0123456789+/=_-"),
    (_HEX_BIT, "0123456789abcdefABCDEF"),
    (_HEXISH_BIT, "0123456789abcdefABCDEFx\\ :"),
    (_LETTER_BIT, _LETTERS),
    (_SEP_BIT, " .-_*"),
    (_LEET_BIT, "013457@$!|+"),
)
_LEET_CHARS = [bytes([c]) for c in b"013457@$!|+"]
_SHORT = 512
_B64_RUN = re.compile(rb"[A-Za-z0-9+/=_-]{20,}")
_HEX_RUN = re.compile(rb"[0-9a-fA-F]{16}")
_HEXISH_RUN = re.compile(rb"[0-9a-fA-Fx\\ :]{16,}")


def _eroded(flags: np.ndarray, n: int) -> np.ndarray:
    """Each position's bits that all of the next ``n`` bytes share: a bit is set somewhere
    exactly when that class has a run of ``n`` (log n passes, by doubling the span)."""
    span = 1
    while 2 * span <= n and len(flags) > span:
        flags = flags[:-span] & flags[span:]
        span *= 2
    rest = n - span
    if not rest:
        return flags
    return flags[:-rest] & flags[rest:] if len(flags) > rest else flags[:0]


def runs(mask: np.ndarray, min_len: int) -> list[tuple[int, int]]:
    """The [start, end) of every run of True at least ``min_len`` long."""
    edges = np.flatnonzero(np.diff(np.concatenate(([False], mask, [False])).astype(np.int8)))
    starts, ends = edges[0::2], edges[1::2]
    keep = ends - starts >= min_len
    return list(zip(starts[keep].tolist(), ends[keep].tolist(), strict=True))


@dataclass(frozen=True, slots=True)
class Variant:
    """One reading of a text: ``how`` it was obtained ("clean", "base64", ...)."""

    how: str
    text: str


# UTF-8 lead bytes of what clean() changes: U+00AD (C2), U+0261 (C9), Greek and Cyrillic
# (CE-D4), U+180E (E1), the U+2000s (E2), U+FEFF (EF), tag characters (F3)
_LEAD_TABLE = bytes(1 if c in {0xC2, 0xC9, *range(0xCE, 0xD5), 0xE1, 0xE2, 0xEF, 0xF3} else 0
                    for c in range(256))  # fmt: skip


def _suspect(raw: bytes) -> bool:
    """Whether the UTF-8 ``raw`` holds a character clean() changes, read from the bytes of
    each candidate's sequence: curly quotes and dashes share the invisible characters' lead
    byte, and most long texts have some, so the lead byte alone does not tell."""
    at = np.flatnonzero(np.frombuffer(raw.translate(_LEAD_TABLE), dtype=np.bool_))
    if not len(at):
        return False
    b = np.frombuffer(raw + b"\x00\x00", dtype=np.uint8)
    lead, two, three = b[at], b[at + 1], b[at + 2]
    space_marks = (
        (two == 0x80) & (((three >= 0x8B) & (three <= 0x8F)) | ((three >= 0xAA) & (three <= 0xAE)))
    ) | ((two == 0x81) & (three >= 0xA0) & (three <= 0xA9) & (three != 0xA5))  # U+200B-200F,
    # U+202A-202E, U+2060-2064, U+2066-2069
    found = (
        ((lead >= 0xCE) & (lead <= 0xD4))
        | ((lead == 0xE2) & space_marks)
        | ((lead == 0xC2) & (two == 0xAD))
        | ((lead == 0xC9) & (two == 0xA1))
        | ((lead == 0xE1) & (two == 0xA0) & (three == 0x8E))
        | ((lead == 0xEF) & (two == 0xBB) & (three == 0xBF))
        | ((lead == 0xF3) & (two == 0xA0))
    )
    return bool(found.any())


_NON_ASCII = re.compile(r"[^\x00-\x7f]+")
_PIECES = 64


def nfkc(text: str) -> str:
    """``unicodedata.normalize("NFKC", text)``, normalising only around the non-ASCII
    characters when they are few: a whole pass over a long text is the dearest step of
    cleaning it once anything in it needs a change (two no-break spaces will do).

    Exact, because an ASCII character is its own NFKC, is a starter, and is never the second
    of a composition: nothing before it changes for what follows, so the text splits
    before any ASCII character, and each non-ASCII run is normalised with the character
    before it (a combining mark's base)."""
    if unicodedata.is_normalized("NFKC", text):  # the quick check: one fast pass
        return text
    pieces = list(itertools.islice(_NON_ASCII.finditer(text), _PIECES + 1))
    if len(pieces) > _PIECES:
        return unicodedata.normalize("NFKC", text)
    out: list[str] = []
    at = 0
    for m in pieces:
        lo, hi = max(m.start() - 1, at), m.end()
        out += (text[at:lo], unicodedata.normalize("NFKC", text[lo:hi]))
        at = hi
    out.append(text[at:])
    return "".join(out)


def clean(text: str) -> str:
    """NFKC, homoglyphs to Latin, invisible and bidirectional characters removed."""
    if text.isascii():
        return text
    text = nfkc(text)
    raw = text.encode("utf-8", "replace")
    if not _suspect(raw):
        return text
    if b"\xf3\xa0" in raw:
        text = str(_TAG_ANY.sub("", text))
    # str.translate with a table this size costs a millisecond on a long text; the few
    # characters there are to change are changed where they are
    return str(_CLEAN_ANY.sub(lambda m: m.group().translate(_CLEAN), text))


def variants(text: str, *, max_decoded: int = 8) -> list[Variant]:
    """The clean text, then each hidden reading found in it (at most ``max_decoded``)."""
    out = [Variant("clean", clean(text))]
    base = out[0].text
    found: list[Variant] = []
    if not text.isascii() and b"\xf3\xa0" in text.encode("utf-8", "replace"):  # U+E00xx tags
        hidden = "".join(chr(ord(c) - 0xE0000) for m in _TAGS.finditer(text) for c in m.group())
        if hidden:
            found.append(Variant("tags", hidden))
    # Candidates are found on the bytes with numpy (a regex pass over a long prompt costs a
    # quarter of a millisecond); only a candidate is handed to a regex or a decoder.
    raw = base.encode("utf-8", "replace")
    short = len(raw) < _SHORT  # a regex pass is cheaper than numpy's fixed costs
    if short:
        b64_runs = [m.span() for m in _B64_RUN.finditer(raw)]
        hexy = _HEX_RUN.search(raw) is not None
    else:
        # every byte's classes as bits, in one C pass; then whether any class has a run
        # long enough to decode, for all classes at once (most long prompts have none)
        flags = np.frombuffer(raw.translate(_FLAGS), dtype=np.uint8)
        long16 = _eroded(flags, 16)
        has16 = int(np.bitwise_or.reduce(long16)) if len(long16) else 0
        long20 = long16[:-4] & long16[4:] if has16 & _B64_BIT else long16[:0]
        b64_runs = (
            runs((flags & _B64_BIT) != 0, 20)
            if len(long20) and int(np.bitwise_or.reduce(long20)) & _B64_BIT
            else []
        )
        hexy = bool(has16 & _HEX_BIT)
    for start, end in b64_runs:
        run = raw[start:end].decode("ascii")
        for m in _BASE64.finditer(run):
            decoded = _printable(_b64(m.group(), urlsafe=False))
            if decoded:
                found.append(Variant("base64", decoded))
        for m in _BASE64_URL.finditer(run):
            if "-" in m.group() or "_" in m.group():
                decoded = _printable(_b64(m.group(), urlsafe=True))
                if decoded:
                    found.append(Variant("base64", decoded))
    if hexy or b"\\x" in raw or b"0x" in raw:
        hex_runs = (
            [m.span() for m in _HEXISH_RUN.finditer(raw)]
            if short
            else runs((flags & _HEXISH_BIT) != 0, 16)
            if has16 & _HEXISH_BIT
            else []
        )
        for start, end in hex_runs:
            for m in _HEX.finditer(raw[start:end].decode("ascii")):
                digits = re.sub(r"\\x|0x|[ :]", "", m.group())
                if len(digits) % 2 == 0:
                    with_bytes = _printable(binascii.unhexlify(digits))
                    if with_bytes:
                        found.append(Variant("hex", with_bytes))
    if "%" in base and len(_PERCENT.findall(base)) >= 3:
        found.append(Variant("url", urllib.parse.unquote(base)))
    if short:
        if _SPACED_BYTES.search(raw):
            found.append(Variant("spacing", _collapse(raw).decode("utf-8", "replace")))
    elif len(raw) > 6:
        letter, sep = (flags & _LETTER_BIT) != 0, (flags & _SEP_BIT) != 0
        spaced = letter[:-6] & sep[1:-5] & letter[2:-4] & sep[3:-3] & letter[4:-2] & sep[5:-1]
        if spaced.any():
            found.append(Variant("spacing", _stretches(raw, np.flatnonzero(spaced), _collapse)))
    if len(raw) > 2 and any(c in raw for c in _LEET_CHARS):
        # leetspeak: a leet character inside a word, more than once ("1gn0r3", not "in 2024")
        if short:
            flags = np.frombuffer(raw.translate(_FLAGS), dtype=np.uint8)
        letter, leet = (flags & _LETTER_BIT) != 0, (flags & _LEET_BIT) != 0
        inside = (letter[:-2] & leet[1:-1] & letter[2:]) | (leet[:-2] & leet[1:-1] & letter[2:])
        marks = np.flatnonzero(inside | (letter[:-2] & leet[1:-1] & leet[2:]))
        if len(marks) >= 2:
            leet_text = (
                raw.translate(_LEET).decode("utf-8", "replace")
                if short
                else _stretches(raw, marks, lambda piece: piece.translate(_LEET))
            )
            found.append(Variant("leet", leet_text))
    # rot13 on the bytes: UTF-8's multi-byte sequences have no byte below 0x80 to change
    found.append(Variant("rot13", raw.translate(_ROT13).decode("utf-8", "replace")))
    return out + found[:max_decoded]


def _collapse(raw: bytes) -> bytes:
    """Spaced-out letters joined up ("i g n o r e" -> "ignore")."""
    return _SPACED_BYTES.sub(lambda m: _SEPARATOR_BYTES.sub(b"", m.group()), raw)


def _stretches(raw: bytes, marks: np.ndarray, undo: Callable[[bytes], bytes]) -> str:
    """A long text's reading as the stretches around ``marks`` with some context, each
    undone: every later pass over a whole second copy of a long prompt costs more than
    reading its few hidden words."""
    spans = merge_windows(marks, before=96, after=320, size=len(raw))
    return b"\n".join(undo(raw[lo:hi]) for lo, hi in spans).decode("utf-8", "replace")


def merge_windows(
    points: np.ndarray, *, before: int, after: int, size: int
) -> list[tuple[int, int]]:
    """Windows around sorted ``points``, overlapping ones merged (vectorised: a long text
    can have thousands of points)."""
    if not len(points):
        return []
    starts = np.maximum(points - before, 0)
    ends = np.minimum(points + after, size)
    new = np.concatenate(([True], starts[1:] > ends[:-1]))
    firsts = np.flatnonzero(new)
    lasts = np.concatenate((firsts[1:] - 1, [len(points) - 1]))
    return list(zip(starts[firsts].tolist(), ends[lasts].tolist(), strict=True))


def _b64(chunk: str, *, urlsafe: bool) -> bytes:
    pad = "=" * (-len(chunk) % 4)
    try:
        if urlsafe:
            return base64.urlsafe_b64decode(chunk + pad)
        return base64.b64decode(chunk + pad, validate=True)
    except (binascii.Error, ValueError):
        return b""


def _printable(raw: bytes) -> str:
    """The decoded bytes as text, if they read as text (a random blob does not)."""
    if len(raw) < 8:
        return ""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return ""
    letters = sum(c.isalpha() or c.isspace() for c in text)
    return clean(text) if letters >= 0.8 * len(text) else ""
