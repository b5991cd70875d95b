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


_SECRET_PREFIXES = (
    r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b",  # AWS access key id
    r"\bgh[pousr]_[A-Za-z0-9]{36}\b",  # GitHub tokens
    r"\bgithub_pat_[A-Za-z0-9_]{22,}",
    r"\bxox[abposr]-[A-Za-z0-9-]{10,}",  # Slack
    r"\b[sr]k_(?:live|test)_[A-Za-z0-9]{16,}",  # Stripe
    r"\bsk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}",  # OpenAI, Anthropic
    r"\bAIza[0-9A-Za-z_-]{35}",  # Google API key
    r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",  # JWT
    r"\bfp-[a-z0-9]{4,}\.[A-Za-z0-9_-]{16,}",  # fleetpilot's own API keys
    r"-----BEGIN (?:[A-Z]+ )*PRIVATE KEY-----[\s\S]*?-----END (?:[A-Z]+ )*PRIVATE KEY-----",
)

# Earlier kinds win where matches overlap: a secret before the digits inside it.
KINDS: tuple[_Kind, ...] = (
    _Kind("SECRET", re.compile("|".join(_SECRET_PREFIXES))),
    _Kind(
        "SECRET",
        re.compile(
            r"(?i)\b(?:api[_-]?key|secret|token|passw(?:or)?d|pwd|access[_-]?key)\b['\"]?"
            r"\s*[:=]\s*['\"]?([^\s'\"]{8,})"
        ),
        group=1,
    ),
    _Kind(
        "EMAIL",
        re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b"),
    ),
    _Kind("IBAN", re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b"), iban_ok),
    _Kind("CARD", re.compile(r"\b\d(?:[ -]?\d){12,18}\b"), _card_ok),
    _Kind("SSN", re.compile(r"\b(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}\b")),
    _Kind(
        "NINO",  # UK National Insurance number
        re.compile(
            r"\b(?!BG|GB|NK|KN|TN|NT|ZZ)[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z]"
            r" ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b"
        ),
    ),
    _Kind("DNI", re.compile(r"\b(?:\d{8}|[XYZ]\d{7})-?[A-Z]\b"), _dni_ok),  # Spain: DNI, NIE
    _Kind(
        "PHONE",  # international (+...), North American, or a national number from 0
        re.compile(
            r"(?<![\w+])\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?)(?:[ .-]?\d{2,4}){2,4}\b"
            r"|(?<![\w+(])\(?\d{3}\)?[ .-]\d{3}[ .-]\d{4}\b"
            r"|(?<![\w+])(?!\d{3}-\d{2}-\d{4}\b)0\d{2,4}(?:[ .-]?\d{2,4}){2,3}\b"
        ),
        _phone_ok,
    ),
    _Kind("SECRET", re.compile(r"(?<![A-Za-z0-9+/_-])[A-Za-z0-9+/_-]{32,}"), _token_ok),
)


def find(text: str, kinds: Iterable[str] | None = None) -> list[Finding]:
    """Every finding in ``text``, in order, none overlapping another."""
    wanted = None if kinds is None else set(kinds)
    taken: list[Finding] = []
    for kind in KINDS:
        if wanted is not None and kind.name not in wanted:
            continue
        for m in kind.pattern.finditer(text):
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
