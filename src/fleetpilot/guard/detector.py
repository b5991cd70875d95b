"""The layered detector: normalise, signatures, the trained model, and an optional second
stage for the uncertain band.

1. Every reading of the text (:func:`~fleetpilot.guard.normalise.variants`).
2. A signature decides alone, in any reading: each is a phrase, not a word, and on the
   shared benign sets (NotInject, xstest, role-play, WildGuard, llm-warden's benign) they
   fire on at most 0.8% of rows; found in a *hidden* reading (decoded base64 or hex, tag
   characters, rot13, spaced letters, leetspeak) it is all the more telling, since honest
   text does not hide an order to ignore the rules.  The model alone missed short
   injections that the signatures name exactly ("ignore all previous instructions and ...").
3. Otherwise the model scores the clean text and each decoded payload; the highest score is
   the verdict, against the threshold chosen in training.
4. A score inside the model's uncertain band goes to the second stage, when one is set (a
   heavier local classifier, or an LLM judge): its score replaces the model's.  Off by
   default; the band keeps it to the few cases the first layers cannot settle.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from fleetpilot.guard.model import Model
from fleetpilot.guard.normalise import variants
from fleetpilot.guard.signatures import hits

__all__ = ["Detector", "SecondStage", "Verdict"]

_DECODED = frozenset({"base64", "hex", "tags", "url"})  # readings the model also scores


class SecondStage(Protocol):
    """A heavier check for uncertain cases: a score in [0, 1] (1: an attack)."""

    def score(self, text: str) -> float: ...


@dataclass(frozen=True, slots=True)
class Verdict:
    attack: bool
    score: float
    layer: str  # what decided: "signature", "model", "second-stage"
    reading: str  # the reading it was decided on: "clean", "base64", ...
    signatures: tuple[str, ...]  # the signature that decided, if one did

    def describe(self) -> str:
        verdict = "attack" if self.attack else "benign"
        sigs = f", signatures {', '.join(self.signatures)}" if self.signatures else ""
        return f"{verdict} (score {self.score:.3f}, {self.layer} on the {self.reading} text{sigs})"


class Detector:
    def __init__(
        self,
        model: Model | None = None,
        *,
        threshold: float | None = None,
        second: SecondStage | None = None,
    ) -> None:
        self.model = model if model is not None else Model.load()
        self.threshold = self.model.threshold if threshold is None else threshold
        self.second = second

    @classmethod
    def from_path(
        cls, path: Path | None, *, threshold: float | None = None, second: SecondStage | None = None
    ) -> Detector:
        """The model at ``path`` (the shipped one for None)."""
        return cls(Model.load(path), threshold=threshold, second=second)

    def check(self, text: str, *, indirect: bool = False) -> Verdict:
        """``indirect``: the text is not the user's (a tool result, a retrieved document),
        where an order about the assistant's answer is itself a sign of injection."""
        readings = variants(text)
        found = hits(text, readings, first=True, indirect=indirect)
        names = tuple(dict.fromkeys(h.name for h in found))
        if found:
            first = next((h for h in found if h.how != "clean"), found[0])
            return Verdict(True, 1.0, "signature", first.how, names)
        score, reading = self.model.score(readings[0].text, []), "clean"
        for v in readings[1:]:
            if v.how in _DECODED:
                s = self.model.score(v.text, [])
                if s > score:
                    score, reading = s, v.how
        layer = "model"
        lo, hi = self.model.uncertain
        if self.second is not None and lo <= score < hi:
            score, layer = float(self.second.score(text)), "second-stage"
        return Verdict(score >= self.threshold, score, layer, reading, names)
