"""The console's web application: FastAPI, pages rendered on the server with Jinja2, no script.

:func:`create_app` builds it for one project; :func:`serve` runs it with uvicorn. Every page
but ``/login`` needs a signed session (:mod:`.auth`); what each page shows for each role is
decided in :mod:`.views` and :mod:`.access`.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import parse_qs, quote

import jinja2
import orjson
from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from markupsafe import Markup

from onshore.console import explorer, views
from onshore.console.access import Forbidden, HttpFor
from onshore.console.auth import SESSION_SECONDS, Role, Sessions, User, UserStore
from onshore.errors import ConfigError, OnshoreError
from onshore.settings import Project

__all__ = ["COOKIE", "create_app", "serve"]

COOKIE: Final = "onshore_session"
_PAGE_CSP: Final = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
_REPORT_CSP: Final = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; sandbox"
"""A report is a document: its own inline styles and pictures, nothing else, no script."""

_templates = jinja2.Environment(
    loader=jinja2.PackageLoader("onshore.console", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)


def _when(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return str(value).replace("T", " ")[:19]


def _size(value: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(value) < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return str(value)


_templates.filters["when"] = _when
_templates.filters["size"] = _size
_templates.filters["svg"] = lambda chart: Markup(chart.svg)  # built escaped in charts.py


def _pretty(value: Any) -> str:
    """A payload as indented JSON (one that is not a JSON object as its text)."""
    if isinstance(value, str):
        return value
    return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()


_templates.filters["pretty"] = _pretty


def _headers(csp: str = _PAGE_CSP) -> dict[str, str]:
    return {
        "Content-Security-Policy": csp,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
    }


def create_app(project: Project, *, http_for: HttpFor | None = None) -> FastAPI:
    """The console for ``project``: users from ``console/users.sqlite``, sessions signed with
    ``console/session.key`` (both made on first use). ``http_for`` gives a client for a
    site's service (tests drive the sites' apps in process); by default mutual TLS."""
    reach: HttpFor = http_for or (lambda _site: None)
    users = UserStore(project)
    sessions = Sessions(project)
    app = FastAPI(title="onshore console", docs_url=None, redoc_url=None, openapi_url=None)

    def page(
        request: Request, template: str, user: User | None, status: int = 200, **context: Any
    ) -> HTMLResponse:
        html = _templates.get_template(template).render(
            user=user,
            path=request.url.path,
            project=project,
            roles=Role,
            now=datetime.now(UTC),
            **context,
        )
        return HTMLResponse(html, status_code=status, headers=_headers())

    def signed_in(request: Request) -> User:
        name = sessions.user_name(request.cookies.get(COOKIE, ""))
        user = users.get(name) if name else None
        if user is None:
            target = quote(
                request.url.path + (f"?{request.url.query}" if request.url.query else "")
            )
            raise HTTPException(303, headers={"Location": f"/login?next={target}"})
        return user

    def guarded(request: Request, render: Callable[[User], Response]) -> Response:
        """Render for the signed-in user; a role that may not see it gets 403, an unknown
        site, run or file 404, anything onshore refuses (a tampered ledger) 503, each as a
        page that says why."""
        user = signed_in(request)
        try:
            return render(user)
        except Forbidden as exc:
            return page(request, "error.html", user, 403, title="Not for your role", why=str(exc))
        except (LookupError, ConfigError) as exc:
            why = exc.message if isinstance(exc, OnshoreError) else str(exc.args[0])
            return page(request, "error.html", user, 404, title="Not found", why=why)
        except OnshoreError as exc:
            # E.g. a site whose approvals disagree with its ledger: its gate will not decide,
            # so nothing of it is shown; the page says why and what to do.
            return page(request, "error.html", user, 503, title="Cannot show this", why=str(exc))

    @app.get("/healthz")
    def health() -> dict[str, str]:
        return {"status": "ok", "project": project.root.name}

    @app.get("/static/console.css")
    def css() -> Response:
        assert _templates.loader is not None
        text = _templates.loader.get_source(_templates, "console.css")[0]
        return Response(text, media_type="text/css", headers={"Cache-Control": "max-age=300"})

    @app.get("/login")
    def login_form(request: Request, next: str = "/") -> HTMLResponse:
        return page(request, "login.html", None, next=_safe_next(next), error=None)

    @app.post("/login")
    async def login(request: Request) -> Response:
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        name = (form.get("username") or [""])[0].strip()
        password = (form.get("password") or [""])[0]
        target = _safe_next((form.get("next") or ["/"])[0])
        user = await run_in_threadpool(users.sign_in, name, password)
        if user is None:
            time.sleep(0.3)  # slows guessing; says nothing about which of the two was wrong
            return page(
                request, "login.html", None, 401, next=target, error="Wrong user name or password."
            )
        response = RedirectResponse(target, status_code=303, headers=_headers())
        response.set_cookie(
            COOKIE,
            sessions.issue(user),
            max_age=SESSION_SECONDS,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    @app.post("/logout")
    def logout() -> Response:
        response = RedirectResponse("/login", status_code=303, headers=_headers())
        response.delete_cookie(COOKIE)
        return response

    @app.get("/")
    def overview(request: Request) -> Response:
        return guarded(
            request,
            lambda u: page(
                request, "overview.html", u, data=views.overview(project, u, http_for=reach)
            ),
        )

    @app.get("/sites/{site_id}")
    def site(request: Request, site_id: str, page_no: int = 1) -> Response:
        from onshore.reads.views import CLIP_FILTERS, ClipQuery

        filters = {k: v for k in CLIP_FILTERS if (v := request.query_params.get(k, "").strip())}

        def render(u: User) -> Response:
            try:
                ClipQuery.parse(filters)  # said here, before the site is asked
            except ConfigError as exc:
                return page(request, "error.html", u, 400, title="Bad filter", why=exc.message)
            data = views.site_detail(
                project, u, site_id, page=page_no, filters=filters, http_for=reach
            )
            return page(request, "site.html", u, data=data)

        return guarded(request, render)

    @app.get("/approvals")
    def approvals(request: Request) -> Response:
        return guarded(
            request,
            lambda u: page(
                request, "approvals.html", u, data=views.approvals(project, u, http_for=reach)
            ),
        )

    @app.get("/rights")
    def rights(request: Request) -> Response:
        return guarded(
            request,
            lambda u: page(
                request, "rights.html", u, data=views.rights(project, u, http_for=reach)
            ),
        )

    @app.get("/decisions")
    def decisions(
        request: Request,
        site: str = "",
        outcome: str = "",
        what: str = "",
        q: str = "",
        page_no: int = 1,
    ) -> Response:
        return guarded(
            request,
            lambda u: page(
                request,
                "decisions.html",
                u,
                sites=views.visible_sites(project, u),
                data=views.decisions(
                    project,
                    u,
                    site=site or None,
                    outcome=outcome or None,
                    what=what or None,
                    text=q or None,
                    page=page_no,
                    http_for=reach,
                ),
            ),
        )

    @app.get("/ledger")
    def ledger(request: Request) -> Response:
        return guarded(
            request,
            lambda u: page(
                request,
                "ledger.html",
                u,
                data=views.ledgers(project, u, http_for=reach),
                result=None,
            ),
        )

    @app.post("/ledger/{name}/verify")
    def verify(request: Request, name: str) -> Response:
        def render(u: User) -> Response:
            result = views.verify_ledger(project, u, name, http_for=reach)
            data = views.ledgers(project, u, http_for=reach)
            return page(request, "ledger.html", u, data=data, result=result)

        return guarded(request, render)

    def explore(request: Request, name: str, params: dict[str, Any], single: bool) -> Response:
        def render(u: User) -> Response:
            try:
                data = explorer.entries(project, u, name, params, http_for=reach)
            except explorer.InvalidFilter as exc:
                data = explorer.empty_page(project, u, name, exc.params, exc.message)
                return page(request, "entries.html", u, 400, data=data, single=False)
            if single and not data["entries"] and data["allowed"]:
                raise LookupError(f"no entry {params.get('seq')} in the ledger of {name}")
            return page(request, "entries.html", u, data=data, single=single)

        return guarded(request, render)

    @app.get("/ledger/{name}/entries")
    def ledger_entries(request: Request, name: str) -> Response:
        return explore(request, name, dict(request.query_params), single=False)

    @app.get("/ledger/{name}/entries/{seq}")
    def ledger_entry(request: Request, name: str, seq: str) -> Response:
        return explore(request, name, {"seq": seq}, single=True)

    @app.get("/ledger/{name}/entries.{fmt}")
    def ledger_export(request: Request, name: str, fmt: str) -> Response:
        def render(u: User) -> Response:
            params = {k: v for k, v in request.query_params.items() if k not in ("before", "after")}
            try:
                found = explorer.export(project, u, name, params, fmt, http_for=reach)
            except explorer.InvalidFilter as exc:
                data = explorer.empty_page(project, u, name, exc.params, exc.message)
                return page(request, "entries.html", u, 400, data=data, single=False)
            if found.withheld is not None:
                return page(
                    request,
                    "withheld.html",
                    u,
                    403,
                    site=name,
                    view="ledger",
                    access=found.withheld,
                    back=(f"/ledger/{name}/entries", "Back to the ledger"),
                )
            headers = {
                **_headers(),
                "Content-Disposition": f'attachment; filename="{found.filename}"',
            }
            return StreamingResponse(found.body, media_type=found.media_type, headers=headers)

        return guarded(request, render)

    @app.get("/runs")
    def runs(request: Request) -> Response:
        return guarded(
            request, lambda u: page(request, "runs.html", u, runs=views.runs(project, u))
        )

    @app.get("/runs/{run}")
    def run(request: Request, run: str) -> Response:
        return guarded(
            request, lambda u: page(request, "run.html", u, data=views.run_detail(project, u, run))
        )

    @app.get("/plan")
    def plan(request: Request) -> Response:
        return guarded(
            request, lambda u: page(request, "plan.html", u, data=views.plan(project, u))
        )

    @app.get("/releases")
    def releases(request: Request) -> Response:
        return guarded(
            request, lambda u: page(request, "releases.html", u, data=views.releases(project, u))
        )

    @app.get("/reports")
    def reports(request: Request) -> Response:
        return guarded(
            request,
            lambda u: page(
                request, "reports.html", u, data=views.reports(project, u, http_for=reach)
            ),
        )

    @app.get("/reports/{site_id}/{name}")
    def report(request: Request, site_id: str, name: str) -> Response:
        def render(u: User) -> Response:
            found, access = views.report_file(project, u, site_id, name, http_for=reach)
            if found is None:
                return page(
                    request, "withheld.html", u, 403, site=site_id, view=name, access=access
                )
            content, kind = found
            if kind == "text/html":
                kind = "text/html; charset=utf-8"
            return Response(content, media_type=kind, headers=_headers(_REPORT_CSP))

        return guarded(request, render)

    return app


def _safe_next(target: str) -> str:
    """Only a path on this site after signing in: never another host."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def serve(
    project: Project,
    host: str = "127.0.0.1",
    port: int = 8765,
    *,
    ready: Callable[[str], None] = lambda _url: None,
) -> None:
    """Serve the console until interrupted; ``ready`` gets the URL once it listens (port 0
    picks a free port)."""
    import uvicorn

    app = create_app(project)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"the console cannot listen on {host}:{port}: {exc.strerror}",
            hint="choose another --port, or stop what listens there",
        ) from exc
    sock.listen(128)  # connections queue from here on, before uvicorn starts accepting
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    ready(f"http://{shown}:{bound}/")
    config = uvicorn.Config(app, log_level="warning", access_log=False)
    uvicorn.Server(config).run(sockets=[sock])
