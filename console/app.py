"""The console's FastAPI application: server-rendered pages for people, `/api/v1` for programs.

Authentication: `Authorization: Bearer TOKEN` on the API; the browser signs in with the same token and gets a
signed, HttpOnly session cookie (SameSite=Strict), and every form post carries the session's CSRF token.
"""

from __future__ import annotations

import hmac
import os
import secrets
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Form, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from filelock import Timeout
from itsdangerous import BadSignature, URLSafeTimedSerializer
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from console import views
from console.config import ConsoleConfig
from console.jobs import RunRequest, RunRequestError, Worker, log_tail
from console.store import Store, User, session_key, token_hash
from fieldguide.errors import FieldguideError
from fieldguide.review.queue import NotInQueue

SESSION_COOKIE = "fieldguide_session"
# Signs session cookies; set it to keep sign-ins across console restarts (else a random key per start).
SECRET_VAR = "FIELDGUIDE_CONSOLE_SECRET"
TEMPLATES = Path(__file__).parent / "templates"


class Decision(BaseModel):
    """Body of approve/reject."""

    model_config = ConfigDict(extra="forbid")
    note: str = Field(min_length=1, max_length=2000)


class RunBody(BaseModel):
    """Body of `POST /api/v1/runs`."""

    model_config = ConfigDict(extra="forbid")
    pipeline: str = Field(max_length=32)
    group: str = Field(default="", max_length=128)
    catalog: str = Field(default="", max_length=1024)


class LabelBody(BaseModel):
    """Body of a label: a species (its group when the router was wrong), or a new species with its group."""

    model_config = ConfigDict(extra="forbid")
    species: str = Field(default="", max_length=200)
    group: str = Field(default="", max_length=128)
    new_species: str = Field(default="", max_length=200)


class BodyLimit:
    """ASGI middleware: a body over `limit` bytes is refused with 413 before the application sees any of it.

    A declared length is checked up front; a chunked body is read up to the limit (never more) and replayed.
    """

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Callable[[], Awaitable[dict]], send: Callable) -> None:
        """Pass the request on, refusing it when its body is too large."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            if not length.isdigit() or int(length) > self.limit:
                await _too_large(self.limit)(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.limit:
                await _too_large(self.limit)(scope, receive, send)
                return
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


def _too_large(limit: int) -> JSONResponse:
    return JSONResponse({"error": f"request body over {limit} bytes"}, status_code=413)


def create_app(cfg: ConsoleConfig, root: Path, store: Store | None = None, run_jobs: bool = True) -> FastAPI:
    """The console application over `store` (default: FIELDGUIDE_HOME/console/console.db).

    Args:
        cfg: the console's config.
        root: the repository (run.py and configs/ for the runs it starts).
        store: the console database.
        run_jobs: execute queued runs in this process (one at a time, in a subprocess each).
    """
    store = store or Store()
    signer = URLSafeTimedSerializer(os.environ.get(SECRET_VAR) or secrets.token_hex(32), salt="fieldguide-console")
    templates = Jinja2Templates(directory=str(TEMPLATES))
    worker = Worker(store, root)
    single = store.console_lock()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> Any:
        if run_jobs:
            try:
                single.acquire(timeout=0)
            except Timeout:
                raise FieldguideError(f"another console runs over {store.path}: one console per database") from None
            requeued = worker.recover()
            if requeued:
                print(f"console: queued again runs {requeued} (a previous console stopped while they ran)", flush=True)
            worker.start()
        yield
        if run_jobs:
            worker.stop()
            single.release()

    app = FastAPI(
        title="fieldguide console",
        version="1",
        lifespan=lifespan,
        docs_url="/api/v1/docs",
        openapi_url="/api/v1/openapi.json",
        redoc_url=None,
    )
    app.add_middleware(BodyLimit, limit=cfg.max_body_bytes)

    @app.middleware("http")
    async def hardened(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "SAMEORIGIN")  # only the console frames its own reports
        response.headers.setdefault("Referrer-Policy", "same-origin")
        return response

    def origin(request: Request, channel: str) -> views.Origin:
        return views.Origin(request.client.host if request.client else "?", channel)

    # --- who is asking

    def session_of(request: Request) -> dict[str, str] | None:
        raw = request.cookies.get(SESSION_COOKIE, "")
        try:
            data = signer.loads(raw, max_age=int(cfg.session_hours * 3600)) if raw else None
        except BadSignature:
            return None
        return data if isinstance(data, dict) else None

    def api_user(request: Request) -> User:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        user = store.user_by_token(token.strip()) if scheme.lower() == "bearer" and token.strip() else None
        if user is None:
            raise HTTPException(401, "a valid API token is required: Authorization: Bearer TOKEN")
        return user

    def page_user(request: Request) -> User:
        session = session_of(request)
        user = store.session_user(session.get("user", ""), session.get("key", "")) if session else None
        if user is None:
            raise _SignIn(str(request.url.path))
        return user

    async def checked_form(request: Request) -> dict[str, str]:
        """The posted form, after its CSRF token matched the session's."""
        form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
        session = session_of(request) or {}
        if not hmac.compare_digest(form.get("csrf", "").encode(), (session.get("csrf") or "-").encode()):
            raise HTTPException(403, "missing or wrong CSRF token: reload the page and try again")
        return form

    def allowed(user: User, grant: str) -> None:
        if not user.may(grant):
            need = "approver or admin" if grant == "decide" else "operator or admin"
            raise HTTPException(403, f"{user.name} is a {user.role}; this needs an {need}")

    # --- errors: JSON for the API, a page for people

    class _SignIn(Exception):
        def __init__(self, path: str) -> None:
            self.path = path

    @app.exception_handler(_SignIn)
    async def to_sign_in(_: Request, exc: _SignIn) -> Response:
        return RedirectResponse(f"/login?next={exc.path}", status_code=303)

    def error(request: Request, status: int, message: str) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": message}, status_code=status)
        return HTMLResponse(templates.get_template("error.html").render(status=status, message=message), status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        response = error(request, exc.status_code, str(exc.detail))
        if exc.status_code == 401:
            response.headers["WWW-Authenticate"] = "Bearer"
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        parts = [
            f"{'.'.join(str(x) for x in e.get('loc', ())[1:]) or 'body'}: {e.get('msg', '')}" for e in exc.errors()
        ]
        return error(request, 422, "; ".join(parts) or "invalid request")

    @app.exception_handler(FieldguideError)
    async def refused(request: Request, exc: FieldguideError) -> Response:
        bad = isinstance(exc, RunRequestError | views.BadRequest)
        status = 404 if isinstance(exc, views.NotFound | NotInQueue) else 400 if bad else 409
        return error(request, status, str(exc))

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> Response:
        return error(request, 500, f"internal error ({type(exc).__name__}); the console's log has the details")

    # --- the API

    api = APIRouter(prefix="/api/v1")

    @api.get("/versions")
    def list_versions(user: User = Depends(api_user)) -> list[dict[str, Any]]:
        """Every model version: stage, approval, who decided, key metrics."""
        return views.versions()

    @api.get("/models/{model}/versions/{version}")
    def get_version(model: str, version: str, user: User = Depends(api_user)) -> dict[str, Any]:
        """One version: gate verdict, metrics, approval, rollout, monitoring, links."""
        return views.version_detail(model, version, cfg)

    @api.post("/models/{model}/versions/{version}/{action}")
    def decide(
        model: str,
        version: str,
        action: Literal["approve", "reject"],
        body: Decision,
        request: Request,
        user: User = Depends(api_user),
    ) -> dict[str, Any]:
        """Approve (its rollout is queued as a run) or reject a version; the note is required."""
        allowed(user, "decide")
        return views.decide(store, cfg, user, model, version, action, body.note, origin(request, "api"))

    @api.get("/releases")
    def list_releases(user: User = Depends(api_user)) -> list[dict[str, str]]:
        """Every release, newest first."""
        return views.releases()

    @api.post("/releases/rollback", status_code=202)
    def post_rollback(request: Request, user: User = Depends(api_user)) -> dict[str, Any]:
        """Queue production's rollback to the previous release."""
        allowed(user, "operate")
        return views.rollback(store, cfg, user, origin(request, "api")).to_dict()

    @api.post("/runs", status_code=202)
    def post_run(body: RunBody, request: Request, user: User = Depends(api_user)) -> dict[str, Any]:
        """Queue a pipeline run; runs execute one at a time, in order."""
        allowed(user, "operate")
        req = RunRequest(body.pipeline, body.group, body.catalog)
        return views.start_run(store, cfg, root, user, req, origin(request, "api")).to_dict()

    @api.get("/runs")
    def list_runs(user: User = Depends(api_user)) -> list[dict[str, Any]]:
        """The console's runs, newest first."""
        return [j.to_dict() for j in store.jobs()]

    @api.get("/runs/{run_id}")
    def get_run(run_id: int, user: User = Depends(api_user)) -> dict[str, Any]:
        """One run: status, the ZenML runs it made and its log tail."""
        job = _job(run_id)
        return {**job.to_dict(), "log_tail": log_tail(job.id, cfg.log_tail_lines)}

    @api.get("/pipeline-runs")
    def list_pipeline_runs(user: User = Depends(api_user)) -> list[dict[str, str]]:
        """The newest runs of the ZenML store."""
        return views.pipeline_runs(cfg)

    @api.get("/pipeline-runs/{run_id}")
    def get_pipeline_run(run_id: str, user: User = Depends(api_user)) -> dict[str, Any]:
        """One run of the ZenML store: status, its steps and its log tail."""
        return views.pipeline_run(run_id, cfg, cfg.log_tail_lines)

    @api.get("/monitoring")
    def get_monitoring(user: User = Depends(api_user)) -> list[dict[str, Any]]:
        """Each model's newest monitor verdict with its reasons."""
        return views.monitoring()

    @api.get("/review")
    def get_review(show_all: bool = Query(False, alias="all"), user: User = Depends(api_user)) -> list[dict[str, Any]]:
        """The review queue in review order (`all`: committed photos too)."""
        return views.review_queue(show_all)

    @api.post("/review/{request_id}/label")
    def post_label(
        request_id: str, body: LabelBody, request: Request, user: User = Depends(api_user)
    ) -> dict[str, Any]:
        """Label a queued photo."""
        allowed(user, "decide")
        return views.label(store, user, request_id, body.species, body.group, body.new_species, origin(request, "api"))

    @api.get("/audit")
    def get_audit(user: User = Depends(api_user)) -> list[dict[str, Any]]:
        """The audit log, newest first."""
        return store.audit_log()

    def _job(run_id: int) -> Any:
        try:
            return store.job(run_id)
        except FieldguideError as exc:
            raise views.NotFound(str(exc)) from exc

    app.include_router(api)

    # --- pages

    def page(request: Request, name: str, user: User, **context: Any) -> HTMLResponse:
        session = session_of(request) or {}
        return templates.TemplateResponse(
            request, name, {"user": user, "csrf": session.get("csrf", ""), "cfg": cfg, **context}
        )

    @app.get("/", include_in_schema=False)
    def home() -> Response:
        return RedirectResponse("/versions", status_code=303)

    @app.get("/login", include_in_schema=False)
    def login_page(request: Request, next: str = "/versions") -> Response:  # noqa: A002
        return templates.TemplateResponse(request, "login.html", {"next": _local(next), "message": ""})

    @app.post("/login", include_in_schema=False)
    def login(request: Request, token: str = Form(""), next: str = Form("/versions")) -> Response:  # noqa: A002
        sent_from = request.headers.get("origin")
        if sent_from and sent_from != f"{request.url.scheme}://{request.url.netloc}":
            raise HTTPException(403, "sign in from the console's own page")  # no signing a victim in as someone else
        user = store.user_by_token(token.strip())
        if user is None:
            context = {"next": _local(next), "message": "unknown token"}
            return templates.TemplateResponse(request, "login.html", context, status_code=401)
        store.audit(user.name, "sign in", "console", "", str(origin(request, "browser")))
        response = RedirectResponse(_local(next), status_code=303)
        key = session_key(token_hash(token.strip()))
        cookie = signer.dumps({"user": user.name, "key": key, "csrf": secrets.token_urlsafe(24)})
        response.set_cookie(
            SESSION_COOKIE,
            cookie,
            max_age=int(cfg.session_hours * 3600),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    @app.post("/logout", include_in_schema=False)
    async def logout(request: Request, user: User = Depends(page_user)) -> Response:
        await checked_form(request)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE)
        return response

    @app.get("/versions", include_in_schema=False)
    def versions_page(request: Request, user: User = Depends(page_user)) -> Response:
        return page(request, "versions.html", user, rows=views.versions())

    @app.get("/models/{model}/versions/{version}", include_in_schema=False)
    def version_page(model: str, version: str, request: Request, user: User = Depends(page_user)) -> Response:
        return page(request, "version.html", user, v=views.version_detail(model, version, cfg))

    @app.get("/models/{model}/versions/{version}/report", include_in_schema=False)
    def report_page(model: str, version: str, user: User = Depends(page_user)) -> Response:
        return HTMLResponse(views.evaluation_report(model, version))

    @app.get("/models/{model}/versions/{version}/evidently", include_in_schema=False)
    def evidently_page(model: str, version: str, user: User = Depends(page_user)) -> Response:
        return HTMLResponse(views.drift_report(model, version))

    @app.post("/models/{model}/versions/{version}/{action}", include_in_schema=False)
    async def decide_form(
        model: str, version: str, action: str, request: Request, user: User = Depends(page_user)
    ) -> Response:
        form = await checked_form(request)
        if action not in ("approve", "reject"):
            raise HTTPException(404, f"no action {action!r}")
        allowed(user, "decide")
        where = origin(request, "browser")
        await run_in_threadpool(views.decide, store, cfg, user, model, version, action, form.get("note", ""), where)
        return RedirectResponse(f"/models/{model}/versions/{version}", status_code=303)

    @app.get("/releases", include_in_schema=False)
    def releases_page(request: Request, user: User = Depends(page_user)) -> Response:
        return page(request, "releases.html", user, rows=views.releases())

    @app.post("/releases/rollback", include_in_schema=False)
    async def rollback_form(request: Request, user: User = Depends(page_user)) -> Response:
        await checked_form(request)
        allowed(user, "operate")
        job = await run_in_threadpool(views.rollback, store, cfg, user, origin(request, "browser"))
        return RedirectResponse(f"/runs/{job.id}", status_code=303)

    @app.get("/runs", include_in_schema=False)
    def runs_page(request: Request, user: User = Depends(page_user)) -> Response:
        from fieldguide.keys import PIPELINES

        context = {"jobs": store.jobs(), "pipeline_runs": views.pipeline_runs(cfg), "pipelines": PIPELINES}
        return page(request, "runs.html", user, groups=views.dataset_groups(root), **context)

    @app.post("/runs", include_in_schema=False)
    async def run_form(request: Request, user: User = Depends(page_user)) -> Response:
        form = await checked_form(request)
        allowed(user, "operate")
        req = RunRequest(form.get("pipeline", ""), form.get("group", ""), form.get("catalog", "").strip())
        job = await run_in_threadpool(views.start_run, store, cfg, root, user, req, origin(request, "browser"))
        return RedirectResponse(f"/runs/{job.id}", status_code=303)

    @app.get("/runs/{run_id}", include_in_schema=False)
    def run_page(run_id: int, request: Request, user: User = Depends(page_user)) -> Response:
        job = _job(run_id)
        return page(request, "run.html", user, job=job, tail=log_tail(job.id, cfg.log_tail_lines))

    @app.get("/pipeline-runs/{run_id}", include_in_schema=False)
    def pipeline_run_page(run_id: str, request: Request, user: User = Depends(page_user)) -> Response:
        return page(request, "pipeline_run.html", user, run=views.pipeline_run(run_id, cfg, cfg.log_tail_lines))

    @app.get("/monitoring", include_in_schema=False)
    def monitoring_page(request: Request, user: User = Depends(page_user)) -> Response:
        return page(request, "monitoring.html", user, rows=views.monitoring())

    @app.get("/review", include_in_schema=False)
    def review_page(request: Request, user: User = Depends(page_user)) -> Response:
        return page(request, "review.html", user, rows=views.review_queue())

    @app.get("/review/{request_id}/photo", include_in_schema=False)
    def review_photo(request_id: str, user: User = Depends(page_user)) -> Response:
        return FileResponse(views.review_photo(request_id))

    @app.post("/review/{request_id}/label", include_in_schema=False)
    async def label_form(request_id: str, request: Request, user: User = Depends(page_user)) -> Response:
        form = await checked_form(request)
        allowed(user, "decide")
        group, _, species = form.get("choice", "").partition("/")
        new_species = form.get("new_species", "").strip()
        if new_species:
            species = ""
        where = origin(request, "browser")
        await run_in_threadpool(views.label, store, user, request_id, species, group, new_species, where)
        return RedirectResponse("/review", status_code=303)

    @app.get("/audit", include_in_schema=False)
    def audit_page(request: Request, user: User = Depends(page_user)) -> Response:
        return page(request, "audit.html", user, rows=store.audit_log())

    return app


def _local(path: str) -> str:
    """A redirect target on this site only (no open redirect through ?next=)."""
    same_site = path.startswith("/") and not path.startswith("//") and "\\" not in path and path.isprintable()
    return path if same_site else "/versions"
