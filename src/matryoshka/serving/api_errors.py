"""Errors answered in OpenAI's shape, and the client that hung up while its request waited."""

from __future__ import annotations

from fastapi.responses import JSONResponse

__all__ = ["APIError", "ClientGone"]


class ClientGone(Exception):
    """The client hung up while its request waited for the model; its texts were taken off the queue."""


async def submit_while_connected(request: Request, batcher: MicroBatcher, texts: list[str]) -> tuple[np.ndarray, ...]:
    """``batcher.submit(texts)``, cancelled (so its texts leave the queue) if the client disconnects meanwhile.

    The body has been read by then, so the next ``receive()`` only returns when the client goes away.
    """
    work = asyncio.ensure_future(batcher.submit(texts))

    async def hung_up() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watch = asyncio.ensure_future(hung_up())
    try:
        await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
    if not work.done():
        work.cancel()
        raise ClientGone()
    return work.result()


class APIError(Exception):
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
