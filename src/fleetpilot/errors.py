"""Every error fleetpilot raises, in one place, named by condition.

    FleetpilotError
    ├── ConfigError                 bad catalogue / fleet / flags, found at start-up
    ├── DocumentUnreadable          a file that cannot be ingested (reported, skipped)
    └── ApiError                    reaches a client as OpenAI-shaped JSON with ``status``
        ├── BadRequest          400 malformed JSON, wrong types, invalid UTF-8, bounds
        ├── Unauthorized        401 no or wrong API key / admin credential
        ├── Forbidden           403 an admin endpoint asked from off the loopback
        ├── ModelNotFound       404 no pool serves the model
        ├── PayloadTooLarge     413 body over the configured limit
        ├── Overloaded          429 shed: no replica can serve it in time (Retry-After)
        │   ├── RateLimited         a key's, tenant's or model's per-minute limit is spent
        │   └── SpendCapReached     the fleet's $/hour cap is committed (batch first)
        ├── QuotaExceeded       429 insufficient_quota: a budget cannot take the request
        ├── StoreDown           503 the shared store is unreachable and budgets fail closed
        ├── NoHealthyReplica    503 every replica of the model is down or cooling down
        └── UpstreamError       502 a replica failed; retried on another replica first
            ├── UpstreamUnavailable   connection refused/reset before the first byte
            ├── UpstreamStatus        the replica answered 5xx
            ├── UpstreamTimeout       no first byte within the timeout
            └── ReplicaGone           the replica died after it began streaming

Whether to retry is decided here, by type (:func:`retryable`), and nowhere else.

What a client reads is ``message``: it never names a replica, a URL or a replica's own error
text.  Those go in ``detail``, which only the gateway's log sees (once, when the error is
answered; :func:`log_line`).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ApiError",
    "BadRequest",
    "ConfigError",
    "DocumentUnreadable",
    "FleetpilotError",
    "Forbidden",
    "ModelNotFound",
    "NoHealthyReplica",
    "Overloaded",
    "PayloadTooLarge",
    "QuotaExceeded",
    "RateLimited",
    "ReplicaGone",
    "SpendCapReached",
    "StoreDown",
    "Unauthorized",
    "UpstreamError",
    "UpstreamStatus",
    "UpstreamTimeout",
    "UpstreamUnavailable",
    "log_line",
    "retryable",
]


class FleetpilotError(Exception):
    """Base of everything fleetpilot raises on purpose."""


class ConfigError(FleetpilotError):
    """Configuration that cannot work; raised before anything starts serving."""


class DocumentUnreadable(FleetpilotError):
    """A file ingestion cannot read as a document: not text in its encoding, a broken PDF,
    nothing in it.  The run reports it by name and goes on with the rest."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class ApiError(FleetpilotError):
    status = 500
    type = "server_error"
    code: str | None = None

    def __init__(
        self, message: str, *, param: str | None = None, detail: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.detail = detail

    def headers(self) -> dict[str, str]:
        return {}

    def body(self) -> dict[str, Any]:
        """OpenAI's error shape: ``{"error": {"message", "type", "param", "code"}}``."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class BadRequest(ApiError):
    status = 400
    type = "invalid_request_error"


class GuardBlocked(BadRequest):
    """A guardrail refused the request, or cut its answer; ``code`` says which rule
    (``prompt_injection``, ``jailbreak``, ``indirect_prompt_injection``, ``pii_detected``,
    ``output_leak``)."""

    def __init__(self, message: str, *, code: str, detail: str | None = None) -> None:
        super().__init__(message, detail=detail)
        self.code = code


class Unauthorized(ApiError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class Forbidden(ApiError):
    status = 403
    type = "invalid_request_error"
    code = "forbidden"


class ModelNotFound(ApiError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class PayloadTooLarge(ApiError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class Overloaded(ApiError):
    """Shed: the fleet cannot serve this request by its deadline; try again later."""

    status = 429
    type = "rate_limit_error"
    code = "overloaded"

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(max(1, round(self.retry_after)))}


class RateLimited(Overloaded):
    """A key's, tenant's or model's requests or tokens per minute are spent for now."""

    code = "rate_limit_exceeded"


class SpendCapReached(Overloaded):
    """The fleet's committed spend rate is at its cap (batch work is refused first)."""

    code = "spend_cap_reached"


class QuotaExceeded(ApiError):
    """A budget cannot take this request's worst-case cost (OpenAI's quota answer)."""

    status = 429
    type = "insufficient_quota"
    code = "insufficient_quota"

    def __init__(self, message: str, *, resets_in: float | None = None) -> None:
        super().__init__(message)
        self.resets_in = resets_in

    def headers(self) -> dict[str, str]:
        if self.resets_in is None:
            return {}
        return {"Retry-After": str(max(1, round(self.resets_in)))}


class StoreDown(ApiError):
    """The shared store cannot be reached and the configured policy is to fail closed."""

    status = 503
    type = "server_error"
    code = "store_unavailable"


class NoHealthyReplica(ApiError):
    status = 503
    type = "server_error"
    code = "no_healthy_replica"


class UpstreamError(ApiError):
    status = 502
    type = "server_error"
    code = "upstream_error"


class UpstreamUnavailable(UpstreamError):
    code = "upstream_unavailable"


class UpstreamStatus(UpstreamError):
    code = "upstream_status"

    def __init__(self, message: str, *, upstream_status: int, detail: str | None = None) -> None:
        super().__init__(message, detail=detail)
        self.upstream_status = upstream_status


class UpstreamTimeout(UpstreamError):
    code = "upstream_timeout"


class ReplicaGone(UpstreamError):
    code = "replica_gone"


def retryable(exc: BaseException) -> bool:
    """A failure before the client saw anything can go to another replica; 4xx cannot."""
    if isinstance(exc, UpstreamStatus):
        return exc.upstream_status >= 500
    return isinstance(exc, UpstreamError)


def log_line(exc: ApiError, request_id: str) -> str:
    """The one log line for an error answered to a client: status, code, message, detail."""
    detail = f" ({exc.detail})" if exc.detail else ""
    return f"{request_id} {exc.status} {exc.code or exc.type}: {exc.message}{detail}"
