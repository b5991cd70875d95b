"""Every error fleetpilot raises, in one place, named by condition.

    FleetpilotError
    ├── ConfigError                 bad catalogue / fleet / flags, found at start-up
    └── ApiError                    reaches a client as OpenAI-shaped JSON with ``status``
        ├── BadRequest          400 malformed JSON, wrong types, invalid UTF-8
        ├── ModelNotFound       404 no pool serves the model
        ├── PayloadTooLarge     413 body over the configured limit
        ├── Overloaded          429 shed: no replica can serve it in time (Retry-After)
        ├── NoHealthyReplica    503 every replica of the model is down or cooling down
        ├── DeadlineExceeded    504 the request's deadline passed before it could start
        └── UpstreamError       502 a replica failed; retried on another replica first
            ├── UpstreamUnavailable   connection refused/reset before the first byte
            ├── UpstreamStatus        the replica answered 5xx
            ├── UpstreamTimeout       no first byte within the timeout
            └── ReplicaGone           the replica died after it began streaming

Whether to retry is decided here, by type (:func:`retryable`), and nowhere else.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ApiError",
    "BadRequest",
    "ConfigError",
    "DeadlineExceeded",
    "FleetpilotError",
    "ModelNotFound",
    "NoHealthyReplica",
    "Overloaded",
    "PayloadTooLarge",
    "ReplicaGone",
    "UpstreamError",
    "UpstreamStatus",
    "UpstreamTimeout",
    "UpstreamUnavailable",
    "retryable",
]


class FleetpilotError(Exception):
    """Base of everything fleetpilot raises on purpose."""


class ConfigError(FleetpilotError):
    """Configuration that cannot work; raised before anything starts serving."""


class ApiError(FleetpilotError):
    status = 500
    type = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

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


class NoHealthyReplica(ApiError):
    status = 503
    type = "server_error"
    code = "no_healthy_replica"


class DeadlineExceeded(ApiError):
    status = 504
    type = "server_error"
    code = "deadline_exceeded"


class UpstreamError(ApiError):
    status = 502
    type = "server_error"
    code = "upstream_error"


class UpstreamUnavailable(UpstreamError):
    code = "upstream_unavailable"


class UpstreamStatus(UpstreamError):
    code = "upstream_status"

    def __init__(self, message: str, *, upstream_status: int) -> None:
        super().__init__(message)
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
