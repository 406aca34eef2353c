"""The web catalog: a Starlette app with HTML pages and a JSON API over a read-only catalog.

=====================  ==========================  =========================================
page                   JSON                        shows
=====================  ==========================  =========================================
``/``                  ``/api/batches``            batches with progress
``/batches/{id}``      ``/api/batches/{id}``       jobs, attempts, errors, time spent, timeline
``/artifacts``         ``/api/artifacts``          artifacts, filtered as ``catalog list``
``/artifacts/{id}``    ``/api/artifacts/{id}``     config, metrics, per-layer SQNR chart, path
``/compare?model=M``   ``/api/compare?model=M``    variants of a model: size vs quality scatter
=====================  ==========================  =========================================

Safety: the database is opened read-only (:func:`~mono_quant.catalog.readonly.read_only_engine`);
templates autoescape; nothing taken from a URL is used as a file path (pages only show the
path an artifact has under the storage root; templates are loaded by fixed names). With a
token, every request must carry it (``Authorization: Bearer T``, the ``mq_token`` cookie, or
``?token=T`` once, which sets the cookie); it is compared in constant time.

Example:
    app = create_app("sqlite:////srv/mono-quant/catalog.db", storage_root="/srv/artifacts",
                     token="s3cret")
    uvicorn.run(app, host="127.0.0.1", port=8765)
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from mono_quant.catalog.readonly import read_only_engine
from mono_quant.errors import BadInputError, MonoQuantError
from mono_quant.scheduler.web import charts, views
from mono_quant.scheduler.web.params import FILTER_PARAMS, artifact_query, int_param

__all__ = ["TOKEN_COOKIE", "create_app"]

#: The cookie that carries the token after ``?token=…`` was given once.
TOKEN_COOKIE = "mq_token"
# No scripts at all, styles inline, nothing from elsewhere.
_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'"


def _templates() -> Environment:
    env = Environment(loader=PackageLoader("mono_quant.scheduler.web", "templates"),
                      autoescape=select_autoescape(("html", "svg"), default=True))
    env.globals.update(charts=charts, json=lambda v: json.dumps(views.json_ready(v),
                                                                 indent=2, sort_keys=True))
    env.globals.update(size_fmt=_size, num_fmt=lambda digits: lambda v: _num(v, digits))
    env.filters["num"] = _num
    env.filters["size"] = _size
    return env


def _num(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != value:
            return "nan"
        if value in (float("inf"), float("-inf")):
            return "inf" if value > 0 else "-inf"
        return f"{value:.{digits}f}"
    return str(value)


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"  # pragma: no cover


class _TokenGate(BaseHTTPMiddleware):
    """Requests without the token get 401; ``?token=`` sets the cookie for the pages."""

    def __init__(self, app: Any, token: str) -> None:
        super().__init__(app)
        self.token = token.encode()

    def _given(self, request: Request) -> str | None:
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:].strip()
        return request.query_params.get("token") or request.cookies.get(TOKEN_COOKIE)

    async def dispatch(self, request: Request, call_next: Callable) -> Response:
        given = (self._given(request) or "").encode()
        if not hmac.compare_digest(given, self.token):
            return JSONResponse({"error": "a valid token is required"}, status_code=401,
                                headers={"WWW-Authenticate": "Bearer"})
        response = await call_next(request)
        if request.query_params.get("token"):
            response.set_cookie(TOKEN_COOKIE, request.query_params["token"], httponly=True,
                                samesite="strict")
        return response


class _SecurityHeaders(BaseHTTPMiddleware):
    """No scripts, no framing, no sniffing, no referrer: the pages need none of them."""

    async def dispatch(self, request: Request, call_next: Callable) -> Response:
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = _CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "no-referrer"
        return response


def _params(request: Request) -> dict[str, list[str]]:
    params: dict[str, list[str]] = {}
    for key, value in request.query_params.multi_items():
        params.setdefault(key, []).append(value)
    return params


class _Site:
    """The routes' shared state: the read-only engine, the storage root, the templates."""

    def __init__(self, engine: Engine, storage_root: str) -> None:
        self.engine, self.storage_root, self.env = engine, storage_root, _templates()

    def _read(self, fn: Callable[[Session], Any]) -> Any:
        with Session(self.engine) as session, session.begin():
            return fn(session)

    def _page(self, request: Request, template: str, data: Any, **extra: Any) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse(views.json_ready(data))
        html = self.env.get_template(template).render(data=data, request=request, **extra)
        return HTMLResponse(html)

    def _error(self, request: Request, status: int, message: str) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": message}, status_code=status)
        html = self.env.get_template("error.html").render(status=status, message=message,
                                                          request=request)
        return HTMLResponse(html, status_code=status)

    def route(self, fn: Callable[[Request, Session], tuple[str, Any, dict[str, Any]]]) -> Any:
        """An endpoint from ``fn(request, session) -> (template, data, extra)``."""

        async def endpoint(request: Request) -> Response:
            try:
                template, data, extra = await run_in_threadpool(
                    self._read, lambda session: fn(request, session))
            except views.NotFound as e:
                return self._error(request, 404, str(e))
            except BadInputError as e:
                return self._error(request, 400, str(e))
            except (SQLAlchemyError, MonoQuantError) as e:
                return self._error(request, 503, f"catalog query failed: "
                                                 f"{str(e).splitlines()[0]}")
            return self._page(request, template, data, **extra)

        return endpoint

    # --- the pages ------------------------------------------------------------------------

    def batches(self, request: Request, session: Session) -> tuple[str, Any, dict]:
        return "batches.html", views.batches_overview(session), {}

    def batch(self, request: Request, session: Session) -> tuple[str, Any, dict]:
        page = int_param("page", request.query_params.get("page"), 1, 1, 1_000_000)
        data = views.batch_detail(session, request.path_params["id"], page)
        return "batch.html", data, {"timeline": charts.timeline(data["jobs"])}

    def artifacts(self, request: Request, session: Session) -> tuple[str, Any, dict]:
        params = _params(request)
        query = artifact_query(params)
        rows = views.artifacts_page(session, query, self.storage_root)
        shown = {k: ",".join(v) for k, v in params.items() if k in FILTER_PARAMS}
        return "artifacts.html", rows, {"query": query, "params": shown}

    def artifact(self, request: Request, session: Session) -> tuple[str, Any, dict]:
        data = views.artifact_detail(session, request.path_params["id"], self.storage_root)
        chart = charts.bars([(r["layer"], r["sqnr_db"]) for r in data["layer_weight_sqnr_db"]])
        return "artifact.html", data, {"chart": chart}

    def compare(self, request: Request, session: Session) -> tuple[str, Any, dict]:
        model = (request.query_params.get("model") or "").strip()
        if not model:
            raise BadInputError("compare needs ?model=SOURCE (a model source as in the "
                                "artifacts list)")
        data = views.compare_variants(session, model, self.storage_root)
        plots = {}
        for axis, a in data["axes"].items():
            marks = {a["best_size_id"]: "smallest", a["best_value_id"]: "best"}
            if a["best_size_id"] == a["best_value_id"]:
                marks = {a["best_size_id"]: "smallest and best"}
            plots[axis] = charts.scatter(a["points"], "size_bytes", "value", marks)
        return "compare.html", data, {"plots": plots}


def create_app(url: str, *, storage_root: str, token: str | None = None,
               engine: Engine | None = None) -> Starlette:
    """The web catalog over the catalog at ``url`` (opened read-only)."""
    site = _Site(engine or read_only_engine(url), storage_root)
    pages = [
        ("/", site.batches), ("/batches/{id:int}", site.batch),
        ("/artifacts", site.artifacts), ("/artifacts/{id:int}", site.artifact),
        ("/compare", site.compare),
    ]
    routes = []
    for path, fn in pages:
        endpoint = site.route(fn)
        routes.append(Route(path, endpoint))
        routes.append(Route("/api/batches" if path == "/" else "/api" + path, endpoint))
    middleware = [Middleware(_SecurityHeaders)]
    if token:
        middleware.append(Middleware(_TokenGate, token=token))
    app = Starlette(routes=routes, middleware=middleware)
    app.state.engine = site.engine
    return app
