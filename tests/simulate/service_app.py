"""A small real HTTP service for the replay client's tests: FastAPI routes over an Engine, served by uvicorn in a
thread. It stands in for the project's service (not written yet) with the same two routes and bodies:
``POST /v1/moderate`` (``ModerationRequest`` -> ``Decision``) and ``POST /v1/feedback`` (``FeedbackEvent`` ->
``FeedbackResult``); engine errors become 4xx answers carrying their ``reason``.
"""

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from aegis_online.engine import Engine
from aegis_online.errors import AegisError, UnknownRequestError
from aegis_online.schemas import FeedbackEvent, ModerationRequest


def make_app(engine: Engine, fail_first: int = 0, queued: bool = False) -> Any:
    """``queued=True`` answers as a service with a feedback bus does: feedback 202 with a receipt, errors as
    ``{"error": {"type", "message", "code"}}``, and ``GET /v1/tenants/{tenant}/weights``."""
    from fastapi import FastAPI, Query
    from fastapi.responses import JSONResponse

    app = FastAPI()
    state = {"failures_left": fail_first, "moderations": 0, "feedbacks": 0, "weights": 0}
    app.state.counters = state

    def refuse(error: AegisError, status: int) -> JSONResponse:
        if queued:
            body = {"error": {"type": "invalid_request", "message": str(error), "code": error.reason}}
            return JSONResponse(body, status_code=status)
        return JSONResponse({"reason": error.reason, "detail": str(error)}, status_code=status)

    @app.post("/v1/moderate")
    async def moderate(request: ModerationRequest):
        if state["failures_left"] > 0:  # a flaky replica: the client must retry
            state["failures_left"] -= 1
            return JSONResponse({"reason": "unavailable"}, status_code=503)
        state["moderations"] += 1
        try:
            decision = await engine.moderate(request)
        except AegisError as error:
            return refuse(error, 422)
        body = decision.model_dump(mode="json")
        body["served_by"] = "test-replica"  # a field this client does not know: it must be ignored
        return body

    @app.post("/v1/feedback")
    def feedback(event: FeedbackEvent):
        state["feedbacks"] += 1
        try:
            result = engine.feedback(event.model_copy(update={"trusted": True}))  # as for an operator's key
        except UnknownRequestError as error:
            return refuse(error, 404)
        except AegisError as error:
            return refuse(error, 422)
        if not queued:
            return result.model_dump(mode="json")
        status = "queued" if result.applied else "duplicate"
        outcome = {"index": 0, "request_id": event.request_id, "event_id": result.event_id, "status": status}
        return JSONResponse({"accepted": 1, "rejected": 0, "results": [outcome]}, status_code=202)

    if queued:

        @app.get("/v1/tenants/{tenant}/weights")
        def weights(tenant: str, category: list[str] | None = Query(default=None)):
            state["weights"] += 1
            found = engine.weights(tenant, category)
            return {
                "tenant": tenant,
                "learner": engine.learner.name,
                "experts": list(engine.expert_names),
                "categories": {c: {"scope": "global", "weights": w} for c, w in found.items()},
            }

    return app


@contextmanager
def serve(app: Any) -> Iterator[str]:
    """Run ``app`` on a free local port in a thread; yields its base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test service did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
