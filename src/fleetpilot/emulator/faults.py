"""The failures an emulated replica can be told to show, as values.

A fault is set once at start (CLI flags) and can be switched while running
(``POST /admin/fault``).  It applies to the inference endpoints (``/v1/...``) only; ``/health``
reports it, ``/metrics`` and ``/admin`` keep working so a test can always switch it back.

========== ==================================================================================
none       normal service
refuse     accept the TCP connection, then abort it (RST) without any response
error500   answer an OpenAI-shaped 500
hang       accept the request and never answer, until the client gives up
die_after  the replica dies once ``die_after_tokens`` output tokens have been sent since the
           fault was set (the last chunk is flushed first); a streamed client sees its
           stream break mid-way
slow       every step takes ``slowdown`` times as long (a straggler)
========== ==================================================================================
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

__all__ = ["Fault", "FaultSetting"]


class Fault(enum.StrEnum):
    NONE = "none"
    REFUSE = "refuse"
    ERROR500 = "error500"
    HANG = "hang"
    DIE_AFTER = "die_after"
    SLOW = "slow"


@dataclass(frozen=True, slots=True)
class FaultSetting:
    """One fault with its parameter (the other parameter is neutral: 0 tokens, factor 1).

    Build it with :meth:`parse` to get it checked.
    """

    fault: Fault = Fault.NONE
    die_after_tokens: int = 0
    slowdown: float = 1.0

    @classmethod
    def parse(cls, fault: Any, die_after_tokens: Any = 0, slowdown: Any = 1.0) -> FaultSetting:
        """Check raw values (flags or admin JSON); raises ``ValueError`` with the reason."""
        try:
            kind = Fault(fault)
        except ValueError:
            known = " | ".join(f.value for f in Fault)
            raise ValueError(f"unknown fault {fault!r}; choose one of {known}") from None
        if isinstance(die_after_tokens, bool) or not isinstance(die_after_tokens, int):
            raise ValueError("die_after_tokens must be an integer")
        if isinstance(slowdown, bool) or not isinstance(slowdown, int | float):
            raise ValueError("slowdown must be a number")
        if kind is Fault.DIE_AFTER and die_after_tokens < 1:
            raise ValueError("fault die_after needs die_after_tokens >= 1")
        if kind is Fault.SLOW and not slowdown > 0:
            raise ValueError("fault slow needs slowdown > 0")
        return cls(
            kind,
            die_after_tokens if kind is Fault.DIE_AFTER else 0,
            float(slowdown) if kind is Fault.SLOW else 1.0,
        )

    @property
    def healthy(self) -> bool:
        """Whether ``/health`` says 200: a replica that refuses, fails or hangs does not."""
        return self.fault not in (Fault.REFUSE, Fault.ERROR500, Fault.HANG)

    def as_json(self) -> dict[str, Any]:
        return {
            "fault": self.fault.value,
            "die_after_tokens": self.die_after_tokens,
            "slowdown": self.slowdown,
        }
