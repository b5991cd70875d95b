"""Personal data and secrets in text: found, checked, and redacted with stable placeholders.

A pattern alone flags every long number as a card and every pair of letters and digits as
an IBAN, so each kind that has a checksum is confirmed by it: payment cards by Luhn, IBANs by
ISO 13616's mod-97, Spanish DNI/NIE by their check letter, US SSNs by the ranges never
issued.  Secrets are known by their issuers' prefixes (AWS, GitHub, Slack, Stripe, OpenAI,
Google, JWTs, PEM private keys, fleetpilot's own keys), by an assignment to a name such as
``password=``, or, for an unlabelled token, by its entropy.

:class:`Redactor` replaces each value with ``[KIND_n]``; one redactor serves one request, so
a value that appears in several messages gets the same placeholder everywhere, and the
model can still tell two different e-mail addresses apart.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from fleetpilot.guard.normalise import merge_windows, runs

__all__ = ["KINDS", "Finding", "Redactor", "entropy", "find", "iban_ok", "luhn"]


@dataclass(frozen=True, slots=True)
class Finding:
    kind: str
    start: int
    end: int
    value: str


def luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_ok(iban: str) -> bool:
    """ISO 13616: move the first four characters to the end, letters to 10..35, mod 97 = 1."""
    s = iban.replace(" ", "").upper()
    if not 15 <= len(s) <= 34 or not s[:2].isalpha() or not s[2:4].isdigit():
        return False
    rearranged = s[4:] + s[:4]
    try:
        return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1
    except ValueError:
        return False


def entropy(text: str) -> float:
    """Shannon entropy in bits per character."""
    counts = Counter(text)
    n = len(text)
    return -sum(c / n * math.log2(c / n) for c in counts.values()) if n else 0.0


def _dni_ok(value: str) -> bool:
    v = value.replace("-", "").upper()
    number = v[:-1]
    if number[0] in "XYZ":
        number = str("XYZ".index(number[0])) + number[1:]
    return number.isdigit() and "TRWAGMYFPDXBNJZSQVHLCKE"[int(number) % 23] == v[-1]


def _digits(value: str) -> str:
    return re.sub(r"\D", "", value)


def _card_ok(value: str) -> bool:
    d = _digits(value)
    return 13 <= len(d) <= 19 and d[0] in "23456" and luhn(d)


def _phone_ok(value: str) -> bool:
    return 9 <= len(_digits(value)) <= 15


def _token_ok(value: str) -> bool:
    classes = sum(
        (any(c.islower() for c in value), any(c.isupper() for c in value),
         any(c.isdigit() for c in value))
    )  # fmt: skip
    return classes == 3 and entropy(value) >= 4.3


def _always(value: str) -> bool:
    return True


@dataclass(frozen=True, slots=True)
class _Kind:
    name: str
    pattern: re.Pattern[str]
    check: Callable[[str], bool] = _always
    group: int = 0  # the part of the match that is the value
    # where to look (a regex pass over a long prompt costs a tenth of a millisecond or more,
    # and there are a dozen kinds): only if one of these strings occurs ("" for always) ...
    needs: tuple[str, ...] = ("",)
    lower: bool = False  # ... in the lowercased text
    near: str | None = None  # and, in a long text, only in windows: "digits" or "runs",
    around: tuple[int, int] | None = None  # or (before, after) each occurrence of ``needs``


def _prefix(pattern: str, *needs: str) -> _Kind:
    return _Kind("SECRET", re.compile(pattern), needs=needs, around=(1, 512))


# Earlier kinds win where matches overlap: a secret before the digits inside it.
KINDS: tuple[_Kind, ...] = (
    _prefix(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b", "AKIA", "ASIA"),  # AWS access key id
    _prefix(r"\bgh[pousr]_[A-Za-z0-9]{36}\b", "ghp_", "gho_", "ghu_", "ghs_", "ghr_"),  # GitHub
    _prefix(r"\bgithub_pat_[A-Za-z0-9_]{22,}", "github_pat_"),
    _prefix(r"\bxox[abposr]-[A-Za-z0-9-]{10,}", "xox"),  # Slack
    _prefix(r"\b[sr]k_(?:live|test)_[A-Za-z0-9]{16,}", "k_live_", "k_test_"),  # Stripe
    _prefix(r"\bsk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}", "sk-"),  # OpenAI, Anthropic
    _prefix(r"\bAIza[0-9A-Za-z_-]{35}", "AIza"),  # Google API key
    _prefix(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}", "eyJ"),  # JWT
    _prefix(r"\bfp-[a-z0-9]{4,}\.[A-Za-z0-9_-]{16,}", "fp-"),  # fleetpilot's own API keys
    _Kind(  # a whole block, however long
        "SECRET",
        re.compile(
            r"-----BEGIN (?:[A-Z]+ )*PRIVATE KEY-----[\s\S]*?-----END (?:[A-Z]+ )*PRIVATE KEY-----"
        ),
        needs=("-----BEGIN",),
    ),
    _Kind(
        "SECRET",
        re.compile(
            r"(?i)\b(?:api[_-]?key|secret|token|passw(?:or)?d|pwd|access[_-]?key)\b['\"]?"
            r"\s*[:=]\s*['\"]?([^\s'\"]{8,})"
        ),
        group=1,
        needs=("key", "secret", "token", "passw", "pwd"),
        lower=True,
        around=(16, 512),
    ),
    _Kind(
        "EMAIL",
        re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b"),
        needs=("@",),
        around=(128, 256),
    ),
    _Kind("IBAN", re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b"), iban_ok, near="digits"),
    _Kind("CARD", re.compile(r"\b\d(?:[ -]?\d){12,18}\b"), _card_ok, near="digits"),
    _Kind(
        "SSN",
        re.compile(r"\b(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}\b"),
        near="digits",
    ),
    _Kind(
        "NINO",  # UK National Insurance number
        re.compile(
            r"\b(?!BG|GB|NK|KN|TN|NT|ZZ)[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z]"
            r" ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b"
        ),
        near="digits",
    ),
    _Kind(  # Spain: DNI, NIE
        "DNI", re.compile(r"\b(?:\d{8}|[XYZ]\d{7})-?[A-Z]\b"), _dni_ok, near="digits"
    ),
    _Kind(
        "PHONE",  # international (+...), North American, or a national number from 0
        re.compile(
            r"(?<![\w+])\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?)(?:[ .-]?\d{2,4}){2,4}\b"
            r"|(?<![\w+(])\(?\d{3}\)?[ .-]\d{3}[ .-]\d{4}\b"
            r"|(?<![\w+])(?!\d{3}-\d{2}-\d{4}\b)0\d{2,4}(?:[ .-]?\d{2,4}){2,3}\b"
        ),
        _phone_ok,
        near="digits",
    ),
    _Kind(
        "SECRET",
        re.compile(r"(?<![A-Za-z0-9+/_-])[A-Za-z0-9+/_-]{32,}"),
        _token_ok,
        near="runs",
    ),
)

_DIGIT = np.zeros(256, dtype=bool)
_DIGIT[48:58] = True
_TOKEN_BYTES = np.zeros(256, dtype=bool)
_TOKEN_BYTES[list(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/_-")] = True
_REACH = 48  # characters a digit-bearing value may span around its digits (an IBAN: 42)
_SHORT = 256  # characters: below this a pattern's pass costs less than deciding to skip it


class _Where:
    """Where each kind is worth a regex pass, worked out once per text."""

    def __init__(self, text: str) -> None:
        self.text = text
        self._lower: str | None = None
        # one byte per character ("?" for any non-ASCII one), so offsets are the text's own;
        # a short text gets whole-text passes
        self._bytes: np.ndarray | None = (
            np.frombuffer(text.encode("ascii", "replace"), dtype=np.uint8)
            if len(text) > _SHORT
            else None
        )
        self._raw = self._bytes.tobytes() if self._bytes is not None else b""
        self._raw_lower = self._raw.lower()
        self._cache: dict[str, list[tuple[int, int]]] = {}

    def spans(self, kind: _Kind) -> list[tuple[int, int]]:
        hay = self.text
        if kind.lower:
            if self._lower is None:
                self._lower = hay.lower()
            hay = self._lower
        if not any(n in hay for n in kind.needs):
            return []
        if self._bytes is None or (kind.near is None and kind.around is None):
            return [(0, len(self.text))]
        if kind.around is not None:
            raw = self._raw_lower if kind.lower else self._raw
            before, after = kind.around
            found: list[int] = []
            for n in kind.needs:
                needle = n.encode()
                at = raw.find(needle)
                while at >= 0:
                    found.append(at)
                    at = raw.find(needle, at + 1)
            return merge_windows(np.array(sorted(found)), before=before, after=after, size=len(raw))
        near = kind.near
        assert near is not None
        hit = self._cache.get(near)
        if hit is None:
            b = self._bytes
            if near == "digits":
                points = np.flatnonzero(np.take(_DIGIT, b))
                hit = merge_windows(points, before=_REACH, after=_REACH, size=len(b))
            else:
                hit = [(max(0, lo - 1), hi) for lo, hi in runs(np.take(_TOKEN_BYTES, b), 32)]
            self._cache[near] = hit
        return hit


def find(text: str, kinds: Iterable[str] | None = None) -> list[Finding]:
    """Every finding in ``text``, in order, none overlapping another."""
    wanted = None if kinds is None else set(kinds)
    taken: list[Finding] = []
    where = _Where(text) if len(text) > _SHORT else None  # a short text: every pattern, once
    for kind in KINDS:
        if wanted is not None and kind.name not in wanted:
            continue
        matches = (
            kind.pattern.finditer(text)
            if where is None
            else (m for lo, hi in where.spans(kind) for m in kind.pattern.finditer(text, lo, hi))
        )
        for m in matches:
            start, end = m.span(kind.group)
            if start < 0:
                continue
            value = m.group(kind.group)
            if any(f.start < end and start < f.end for f in taken) or not kind.check(value):
                continue
            taken.append(Finding(kind.name, start, end, value))
    return sorted(taken, key=lambda f: f.start)


@dataclass(slots=True)
class Redactor:
    """Placeholders for one request: the same value always reads the same."""

    kinds: frozenset[str] | None = None
    placeholders: dict[str, str] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)

    def redact(self, text: str) -> tuple[str, list[Finding]]:
        found = find(text, self.kinds)
        if not found:
            return text, found
        out: list[str] = []
        at = 0
        for f in found:
            out.append(text[at : f.start])
            out.append(self.placeholder(f))
            at = f.end
        out.append(text[at:])
        return "".join(out), found

    def placeholder(self, f: Finding) -> str:
        key = f"{f.kind}\0{f.value}"
        hit = self.placeholders.get(key)
        if hit is None:
            self.counts[f.kind] += 1
            hit = self.placeholders[key] = f"[{f.kind}_{self.counts[f.kind]}]"
        return hit
