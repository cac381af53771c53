"""The FastAPI app: the page, its settings, and answers streamed as server-sent events.

Routes: `/` (the page), `/page.js`, `/page.css`, `/api/info` (what can be steered), `POST /api/generate`
(an event stream: inspect, token..., done or error), `/dashboard` (the labels' HTML dashboard, if any).
Only those fixed files are served; nothing a client sends becomes a path.
"""

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from saelign.serve.schema import GenerateRequest, Limits, RequestError, check_request
from saelign.serve.session import Session, hookpoint
from saelign.serve.steer import Event, answer_events
from saelign.serve.worker import Busy, Worker

ASSETS = {"page.js": "text/javascript", "page.css": "text/css"}
RETRY_AFTER_S = 2


class BodyLimit:
    """Refuse request bodies over `max_bytes` (413), by their Content-Length and while they arrive."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = JSONResponse({"detail": f"request body over {self.max_bytes} bytes"}, status_code=413)
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self.max_bytes:
            return await too_large(scope, receive, send)
        seen, refused = 0, False

        async def limited() -> Message:
            nonlocal seen, refused
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes and not refused:
                refused = True
                await too_large(scope, receive, send)
                return {"type": "http.disconnect"}  # the app stops reading; what it answers is dropped
            return message

        async def guarded(message: Message) -> None:
            if not refused:
                await send(message)

        await self.app(scope, limited, guarded)


def _asset(name: str) -> str:
    return resources.files("saelign.serve").joinpath(name).read_text(encoding="utf-8")


def info(session: Session, limits: Limits) -> dict[str, Any]:
    slots = session.slot_map
    return {
        "model": Path(getattr(session.model.config, "_name_or_path", "")).name
        or type(session.model).__name__,
        "hookpoint": hookpoint(session.sae) if session.sae else None,
        "features": [{"id": f.id, "label": f.label, "scale": f.scale} for f in session.features],
        "slots": [
            {"concept": c, "slot": s, "scale": sc}
            for c, s, sc in zip(slots.concepts, slots.slots, slots.scales, strict=True)
        ]
        if slots
        else [],
        "adapter": session.peft is not None,
        "dashboard": session.dashboard is not None,
        "limits": {"max_new_tokens": limits.max_new_tokens, "max_prompt_chars": limits.max_prompt_chars},
    }


def create_app(session: Session, limits: Limits | None = None) -> FastAPI:
    limits = limits or Limits()
    worker = Worker(limits.queue_size, limits.time_limit_s)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        worker.start()
        yield
        await asyncio.to_thread(worker.stop)

    app = FastAPI(title="saelign serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)
    app.state.worker = worker

    @app.exception_handler(RequestError)
    async def refused(_: Request, exc: RequestError) -> JSONResponse:
        loc = ["body", *(int(part) if part.isdigit() else part for part in exc.field.split("."))]
        detail = [{"loc": loc, "msg": exc.message, "type": "value_error"}]
        return JSONResponse({"detail": detail}, status_code=422)

    @app.get("/", response_class=HTMLResponse)
    async def page() -> str:
        return _asset("page.html")

    for name, media in ASSETS.items():
        text = _asset(name)
        app.add_api_route(
            f"/{name}",
            lambda text=text, media=media: Response(text, media_type=media),
            methods=["GET"],
            include_in_schema=False,
        )

    @app.get("/api/info")
    async def api_info() -> dict[str, Any]:
        return info(session, limits)

    @app.get("/dashboard")
    async def dashboard() -> FileResponse:
        if session.dashboard is None:
            raise HTTPException(404, "this server has no labels dashboard")
        return FileResponse(session.dashboard, media_type="text/html")

    @app.post("/api/generate")
    async def generate(body: GenerateRequest) -> StreamingResponse:
        ids = check_request(session, body, limits)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[Event | None] = asyncio.Queue()

        def deliver(event: Event | None) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, event)
            except RuntimeError:  # the server stopped while the worker finished: nobody is listening
                pass

        try:
            job = worker.submit(lambda: answer_events(session, body, ids), deliver)
        except Busy:
            raise HTTPException(
                503, "the model is busy; retry shortly", headers={"Retry-After": str(RETRY_AFTER_S)}
            ) from None

        async def stream() -> AsyncIterator[str]:
            try:
                while (event := await events.get()) is not None:
                    yield f"data: {json.dumps(event)}\n\n"
            finally:  # the client left or the stream ended: either way the worker may stop
                job.cancelled.set()

        return StreamingResponse(
            stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"}
        )

    return app
