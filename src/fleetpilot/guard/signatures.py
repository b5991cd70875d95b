"""The phrasing of known attacks, matched on every reading of a text (see :mod:`.normalise`).

Each signature is a phrase, not a word: "ignore" and "instructions" are in countless honest
prompts ("ignore the noise in this data", "follow the instructions below"), and a guard that
fires on trigger words over-defends (NotInject's benign prompts exist to catch exactly
that).  What an attack needs is the *relation*: an order to drop what came before, a demand
for the hidden prompt, a persona without rules, a forged system turn.  A hit in a decoded
reading (base64, hex, tags, rot13) counts for more: honest text does not hide its requests.

These are the first layer, and features of the trained model that follows; they are not
meant to catch every attack alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from fleetpilot.guard.normalise import Variant, variants

__all__ = ["SIGNATURES", "Hit", "Signature", "hits"]

# up to two words between the parts of a phrase, within one clause (no ".;:" between)
_W = r"(?:[\s,]+[\w'-]+){0,2}?[\s,]+"


@dataclass(frozen=True, slots=True)
class Signature:
    name: str
    kind: str  # "injection" or "jailbreak"
    pattern: re.Pattern[str]  # on the lowercased reading, unless ``cased``
    # groups of words: every match contains a word of each group; a reading that lacks one
    # group is not searched
    anchors: tuple[frozenset[bytes], ...]
    rot13: tuple[frozenset[bytes], ...]  # the anchors as a rot13 reading would have them
    cased: bool = False
    indirect_only: bool = False  # an honest request from the user, but not inside a document


@dataclass(frozen=True, slots=True)
class Hit:
    name: str
    kind: str
    how: str  # the reading it was found in


_ROT13 = bytes.maketrans(
    b"abcdefghijklmnopqrstuvwxyz", b"nopqrstuvwxyzabcdefghijklm"
)  # anchors are lowercase


def _sig(
    name: str, kind: str, pattern: str, anchors: str, *, cased: bool = False, indirect: bool = False
) -> Signature:
    groups = tuple(frozenset(g.encode().split()) for g in anchors.split("|"))
    rot = tuple(frozenset(w.translate(_ROT13) for w in g) for g in groups)
    return Signature(name, kind, re.compile(pattern), groups, rot, cased, indirect)


SIGNATURES: tuple[Signature, ...] = (
    _sig(
        "override",
        "injection",
        r"\b(?:ignore|disregard|forget|skip|override|bypass|abandon)\b"
        + _W
        + r"(?:previous|prior|above|earlier|preceding|former|initial|original|all|any|your)\b"
        + _W
        + r"(?:instructions?|prompts?|rules|directions|directives|guidelines"
        + r"|guardrails|constraints|programming|orders)\b",
        "ignore disregard forget skip override bypass abandon | instruction instructions prompt "
        "prompts rules directions directives guidelines guardrails constraints programming orders",
    ),
    _sig(
        "new-orders",
        "injection",
        r"\b(?:new|updated|real|actual|revised|override)\s+(?:instructions?|system\s+prompt|"
        r"task|rules)\s*(?::|are\b|is\b)",
        "new updated real actual revised override | instruction instructions system task rules",
    ),
    _sig(
        "reveal",
        "injection",
        r"\b(?:reveal|print|show|repeat|output|display|leak|dump|disclose|spell out|tell me)\b"
        + _W
        + r"(?:system|initial|hidden|secret|original|pre-?prompt|above)\s+"
        r"(?:prompt|instructions?|message|password|rules)",
        "reveal print show repeat output display leak dump disclose spell tell | prompt "
        "instruction instructions message password rules",
    ),
    _sig(
        "forged-turn",
        "injection",
        r"(?:^|\n)\s*(?:\[/?(?:system|INST)\]|<\|?(?:system|im_start|im_end|endoftext)\|?>"
        r"|#{2,}\s*(?:system|new instructions?)\b|(?:system|assistant)\s*:\s*(?:you|ignore|new))",
        "system inst im_start im_end endoftext assistant new",
    ),
    _sig(
        "persona",  # the word "jailbreak" alone is a topic (phones, games), not an attack
        "jailbreak",
        r"\b(?:do anything now|developer mode (?:enabled|output|on)|jailbroken|jailbreak mode|"
        r"unfiltered and amoral|evil (?:confidant|assistant)|no (?:ethical|moral) "
        r"(?:guidelines|restrictions|principles|boundaries))\b",
        "anything developer jailbroken jailbreak unfiltered evil ethical moral",
    ),
    _sig(
        "no-limits",  # a fixed set of qualifiers: "without violating copyright policies" is fine
        "jailbreak",
        r"\b(?:free(?:d)? (?:from|of)|without|not bound by|no longer (?:bound|restricted) by|"
        r"breaks? free (?:of|from)|(?:don't|do not) have to (?:abide by|follow))\s+"
        r"(?:(?:any|all|the|its|your|their|of|usual|typical|openai's|openai|content|ethical|"
        r"moral|safety|normal)\s+)*(?:rules|restrictions|policies|guidelines|filters|"
        r"censorship|limitations)\b",
        "free freed without bound restricted break breaks have | rules restrictions policies "
        "guidelines filters censorship limitations",
    ),
    _sig(
        "dan",
        "jailbreak",
        r"\bDAN\b|\b[Ss][Tt][Aa][Nn]\b|\bDUDE\b|\bAIM\b(?=.*[Mm]achiavell)",
        "dan stan dude aim",
        cased=True,
    ),
    _sig(
        "stay-in-character",
        "jailbreak",
        r"\b(?:stay in character|never break character|if you break character)\b",
        "character | stay never break",
    ),
    # Inside a document or a tool result (indirect: see the guard stage), an order about the
    # assistant's own answer is out of place; from the user it is an ordinary request.
    # Written on BIPIA's training attacks, checked on its benign contexts.
    _sig(
        "about-your-answer",
        "injection",
        r"\b(?:in|to|into|within|throughout|inside) your (?:answer|response|reply|replies|"
        r"output|summary)\b",
        "your | answer response reply replies output summary",
        indirect=True,
    ),
    _sig(
        "code-to-include",
        "injection",
        r"\b(?:following|subsequent|below) code (?:snippet|block|excerpt|section|segment)\b",
        "code | snippet block excerpt section segment",
        indirect=True,
    ),
)


# punctuation to spaces, so that str.split() yields the words (C speed, no regex scan)
_PUNCT = b"!\"#$%&'()*+,-./:;<=>?@[\\]^`{|}~\n\t\r"
_WORDS = bytes.maketrans(_PUNCT, b" " * len(_PUNCT))


def hits(
    text: str, readings: list[Variant] | None = None, *, first: bool = False, indirect: bool = False
) -> list[Hit]:
    """Every signature found in any reading of ``text`` (its variants unless given), or
    only the first with ``first``.

    A regex scan of a long text costs a quarter of a millisecond, so a signature is searched
    for only in a reading that has one of its anchor words; most readings of most texts have
    none (a rot13 reading of honest text never does)."""
    found: list[Hit] = []
    clean_words: set[bytes] | None = None
    for v in readings if readings is not None else variants(text):
        # rot13 maps words to words: its reading has an anchor only if the clean one has the
        # anchor's rot13, which needs no pass over the text
        if (
            v.how == "rot13"
            and clean_words is not None
            and not any(all(g & clean_words for g in sig.rot13) for sig in SIGNATURES)
        ):
            continue
        lower = v.text.lower()
        words = set(lower.encode("utf-8", "replace").translate(_WORDS).split())
        if v.how == "clean":
            clean_words = words
        for sig in SIGNATURES:
            if sig.indirect_only and not indirect:
                continue
            groups = [g.intersection(words) for g in sig.anchors]
            if not all(groups):
                continue
            present = min(groups, key=len)  # search around the scarcer group's words
            if _search(sig, v.text if sig.cased else lower, lower, present):
                found.append(Hit(sig.name, sig.kind, v.how))
                if first:  # enough to decide (the detector's use)
                    return found
    return found


_REACH = 240  # characters a match may span on either side of its anchor word
_APART = frozenset(_PUNCT.decode() + " ")  # what ends a word in the anchors' reading


def _search(sig: Signature, text: str, lower: str, anchors: frozenset[bytes]) -> bool:
    """Search only around the anchor words' occurrences (a match contains one), unless
    they are so many that the whole text is cheaper."""
    if len(text) <= 4 * _REACH:
        return sig.pattern.search(text) is not None
    spans: list[tuple[int, int]] = []
    for word in anchors:
        needle = word.decode()
        at = lower.find(needle)
        while at >= 0:
            end = at + len(needle)
            # only where it is a word, as the anchors were read ("dan" is in "guidance")
            if (at == 0 or lower[at - 1] in _APART) and (end == len(lower) or lower[end] in _APART):
                spans.append((max(0, at - _REACH), end + _REACH))
                if len(spans) > 32:
                    return sig.pattern.search(text) is not None
            at = lower.find(needle, at + 1)
    return any(sig.pattern.search(text, start, end) for start, end in _merge(spans))


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out
