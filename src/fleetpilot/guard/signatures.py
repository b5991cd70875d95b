"""The phrasing of known attacks, matched on every reading of a text (see :mod:`.normalise`).

Each signature is a phrase, not a word: "ignore" and "instructions" are in countless honest
prompts ("ignore the noise in this data", "follow the instructions below"), and a guard that
fires on trigger words over-defends (NotInject's benign prompts exist to catch exactly
that).  What an attack needs is the *relation*: an order to drop what came before, a demand
for the hidden prompt, a persona without rules, a forged system turn.  A hit in a decoded
reading (base64, hex, tags, rot13) counts for more: honest text does not hide its requests.

These are the first layer, and features of the trained model that follows; they are not
meant to catch every attack alone.

All of them are compiled into one RE2 set (google-re2) and each reading is scanned once for
every signature together: RE2 runs an automaton, so a scan is linear in the text whatever
the patterns, where Python's backtracking ``re`` tried each pattern at every position and
was the dearest layer on a long prompt.  RE2 reads a word boundary in ASCII (a letter with an
accent ends a word for it); word characters inside a phrase are written as Unicode letters
and digits, as ``re`` has them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import re2

from fleetpilot.guard.normalise import Variant, variants

__all__ = ["SIGNATURES", "Hit", "Signature", "hits"]

# up to two words between the parts of a phrase, within one clause (no ".;:" between)
_W = r"(?:[\s,]+[\pL\pN_'-]+){0,2}?[\s,]+"


@dataclass(frozen=True, slots=True)
class Signature:
    name: str
    kind: str  # "injection" or "jailbreak"
    pattern: str  # RE2 syntax; matched ignoring case, unless ``cased``
    cased: bool = False
    indirect_only: bool = False  # an honest request from the user, but not inside a document


@dataclass(frozen=True, slots=True)
class Hit:
    name: str
    kind: str
    how: str  # the reading it was found in


SIGNATURES: tuple[Signature, ...] = (
    Signature(
        "override",
        "injection",
        r"\b(?:ignore|disregard|forget|skip|override|bypass|abandon)\b"
        + _W
        + r"(?:previous|prior|above|earlier|preceding|former|initial|original|all|any|your)\b"
        + _W
        + r"(?:instructions?|prompts?|rules|directions|directives|guidelines"
        + r"|guardrails|constraints|programming|orders)\b",
    ),
    Signature(
        "new-orders",
        "injection",
        r"\b(?:new|updated|real|actual|revised|override)\s+(?:instructions?|system\s+prompt|"
        r"task|rules)\s*(?::|are\b|is\b)",
    ),
    Signature(
        "reveal",
        "injection",
        r"\b(?:reveal|print|show|repeat|output|display|leak|dump|disclose|spell out|tell me)\b"
        + _W
        + r"(?:system|initial|hidden|secret|original|pre-?prompt|above)\s+"
        r"(?:prompt|instructions?|message|password|rules)",
    ),
    Signature(
        "forged-turn",
        "injection",
        r"(?:^|\n)\s*(?:\[/?(?:system|INST)\]|<\|?(?:system|im_start|im_end|endoftext)\|?>"
        r"|#{2,}\s*(?:system|new instructions?)\b|(?:system|assistant)\s*:\s*(?:you|ignore|new))",
    ),
    Signature(
        "persona",  # the word "jailbreak" alone is a topic (phones, games), not an attack
        "jailbreak",
        r"\b(?:do anything now|developer mode (?:enabled|output|on)|jailbroken|jailbreak mode|"
        r"unfiltered and amoral|evil (?:confidant|assistant)|no (?:ethical|moral) "
        r"(?:guidelines|restrictions|principles|boundaries))\b",
    ),
    Signature(
        "no-limits",  # a fixed set of qualifiers: "without violating copyright policies" is fine
        "jailbreak",
        r"\b(?:free(?:d)? (?:from|of)|without|not bound by|no longer (?:bound|restricted) by|"
        r"breaks? free (?:of|from)|(?:don't|do not) have to (?:abide by|follow))\s+"
        r"(?:(?:any|all|the|its|your|their|of|usual|typical|openai's|openai|content|ethical|"
        r"moral|safety|normal)\s+)*(?:rules|restrictions|policies|guidelines|filters|"
        r"censorship|limitations)\b",
    ),
    Signature(
        "dan",
        "jailbreak",
        r"\bDAN\b|\b[Ss][Tt][Aa][Nn]\b|\bDUDE\b|\bAIM\b.*[Mm]achiavell",
        cased=True,
    ),
    Signature(
        "stay-in-character",
        "jailbreak",
        r"\b(?:stay in character|never break character|if you break character)\b",
    ),
    # Inside a document or a tool result (indirect: see the guard stage), an order about the
    # assistant's own answer is out of place; from the user it is an ordinary request.
    # Written on BIPIA's training attacks, checked on its benign contexts.
    Signature(
        "about-your-answer",
        "injection",
        r"\b(?:in|to|into|within|throughout|inside) your (?:answer|response|reply|replies|"
        r"output|summary)\b",
        indirect_only=True,
    ),
    Signature(
        "code-to-include",
        "injection",
        r"\b(?:following|subsequent|below) code (?:snippet|block|excerpt|section|segment)\b",
        indirect_only=True,
    ),
)


@cache
def _matcher(indirect: bool) -> tuple[re2.Set, tuple[Signature, ...]]:
    """One RE2 set of the signatures that apply (compiled once per kind of text)."""
    chosen = tuple(s for s in SIGNATURES if indirect or not s.indirect_only)
    matcher = re2.Set.SearchSet(re2.Options())
    for sig in chosen:
        matcher.Add(sig.pattern if sig.cased else "(?i)" + sig.pattern)
    matcher.Compile()
    return matcher, chosen


def hits(
    text: str, readings: list[Variant] | None = None, *, first: bool = False, indirect: bool = False
) -> list[Hit]:
    """Every signature found in any reading of ``text`` (its variants unless given), or
    only those of the first reading that has any with ``first`` (the detector's use: one
    is enough to decide)."""
    matcher, chosen = _matcher(indirect)
    found: list[Hit] = []
    for v in readings if readings is not None else variants(text):
        matched = matcher.Match(v.text)
        if matched:
            found += (Hit(chosen[i].name, chosen[i].kind, v.how) for i in sorted(matched))
            if first:
                return found
    return found
