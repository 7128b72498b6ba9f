"""Around the whole HTTP app: the token check, one-line 500s and the access log (plain ASGI).

The log names the route template, never the ids or paths in a request, and an unexpected error
is logged as its type and traceback frames, never its message, so no patient data reaches it. A
client that goes away mid-request (a cancelled upload) is no error: one access line says so.
"""

from __future__ import annotations

import hmac
import logging
import time
import traceback

from starlette.requests import ClientDisconnect

from .http_errors import error_response

log = logging.getLogger("lymphnode_mtl.server")


class GuardMiddleware:
    """Token check, one-line 500s and the access log, around the whole app."""

    def __init__(self, app, token: str | None):
        self.app = app
        self.token = token.encode() if token else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status = {"code": 500, "started": False, "gone": False}

        async def send_status(message):
            if message["type"] == "http.response.start":
                status["code"], status["started"] = message["status"], True
            await send(message)

        try:
            if self.token is not None and not self._authorised(scope):
                # refused before the body is read or anything runs
                await error_response(401, "missing or wrong token; send Authorization: Bearer <token>",
                                     {"WWW-Authenticate": "Bearer"})(scope, receive, send_status)
                return
            await self.app(scope, receive, send_status)
        except ClientDisconnect:
            status["gone"] = True  # nobody is left to answer
        except Exception as e:
            log.error("unhandled %s\n%s", type(e).__name__, "".join(traceback.format_tb(e.__traceback__)))
            if not status["started"]:
                await error_response(500, f"internal server error ({type(e).__name__}); see the server log")(
                    scope, receive, send_status)
        finally:
            route = scope.get("route")
            outcome = "client disconnected" if status["gone"] else str(status["code"])
            log.info("%s %s %s %.1f ms", scope["method"], getattr(route, "path", "-"), outcome,
                     1000 * (time.perf_counter() - t0))

    def _authorised(self, scope) -> bool:
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                scheme, _, given = value.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self.token)
        return False
