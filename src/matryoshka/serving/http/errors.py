"""Errors answered in OpenAI's shape, and the client that hung up while its request waited."""

from __future__ import annotations

from fastapi.responses import JSONResponse

from matryoshka.errors import ClientGone, ServingError

__all__ = ["APIError", "ClientGone"]


class APIError(ServingError):
    """An error answered in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        type_: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type_

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status)
