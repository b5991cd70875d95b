"""Guardrails: what a prompt or an answer carries that it should not — prompt injection,
jailbreaks, personal data, secrets, a leaked system prompt.

Pure text in, findings out, no I/O: :mod:`.normalise` undoes the tricks that hide an attack
from a matcher, :mod:`.pii` finds and redacts personal data and secrets, :mod:`.signatures`
knows the phrasing of known attacks.  The gateway's guard stage and the ``fleetpilot guard``
commands are built on these.
"""
