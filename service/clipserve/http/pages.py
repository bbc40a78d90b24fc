"""The pages a browser opens: the playground at `/` and Swagger UI at `/schema/swagger`.

Both are static files shipped in the package (Swagger UI's from the pinned swagger-ui-bundle-v2
wheel), so nothing is fetched from another host, and every URL in them is relative, so they also
work under a path prefix (an ingress serving clipserve at `/clip/`). The pages and the OpenAPI
document are served without an API key: they ask for the key and send it with each API call.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from litestar import Litestar, Request, Response, Router, get
from litestar.enums import MediaType
from litestar.exceptions import NotFoundException
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import OpenAPIRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from litestar.response import File
from swagger_ui_bundle import swagger_ui_path

from clipserve import __version__
from clipserve.http.middleware import PUBLIC

PLAYGROUND_DIR = Path(__file__).parent / "playground"
APIDOCS_DIR = Path(__file__).parent / "apidocs"
_ROOT_MARK = b"{root}"
_BEARER = "bearer"

# The pages load only their own files and talk only to this server (connect-src): a browser
# refuses anything else even if a page were changed to ask for it. Swagger UI sets inline styles.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'none'"
)
_FILE_HEADERS = {"X-Content-Type-Options": "nosniff"}
PAGE_HEADERS = {
    **_FILE_HEADERS,
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Referrer-Policy": "no-referrer",
}
# Named, not guessed: a guess can fall back to octet-stream, which nosniff forbids running.
_MEDIA_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
# What swagger.html loads from the swagger-ui-bundle-v2 wheel.
SWAGGER_UI_FILES = ("swagger-ui-bundle.js", "swagger-ui.css")


def relative_root(request: Request) -> str:
    """The relative URL from the requested page to the app's root ("" for "/schema", "../" for
    "/schema/swagger"), as the path the browser asked for may carry a prefix the app never sees."""
    raw = request.scope.get("raw_path") or request.scope["path"].encode()
    return "../" * max(raw.count(b"/") - 1, 0)


class OfflineSwagger(OpenAPIRenderPlugin):
    """Swagger UI from the package's files, with the schema inlined as JSON data (not script)."""

    def __init__(self, playground: bool) -> None:
        super().__init__(path="/swagger")
        nav = b'<nav class="clipserve-nav"><a href="{root}./">Playground</a></nav>'
        html = (APIDOCS_DIR / "swagger.html").read_bytes()
        self._html = html.replace(b"{nav}", nav if playground else b"")

    def render(self, request: Request, openapi_schema: dict[str, Any]) -> bytes:
        # escaped, "</" cannot close the <script type="application/json"> block the schema is in
        spec = self.render_json(request, openapi_schema).replace(b"</", b"<\\/")
        page = self._html.replace(_ROOT_MARK, relative_root(request).encode())
        return page.replace(b"{spec}", spec)


def openapi_config(auth: bool, playground: bool) -> OpenAPIConfig:
    """/schema (Swagger UI) and /schema/openapi.json; with `auth`, a bearer scheme to authorize."""
    return OpenAPIConfig(
        title="clipserve",
        version=__version__,
        description="CLIP embeddings and ranking; /encode and /rank are wire-compatible "
        "with BentoML's CLIP-API-service.",
        render_plugins=[OfflineSwagger(playground)],
        openapi_router=Router(
            "/schema",
            route_handlers=[],
            include_in_schema=False,
            opt={PUBLIC: True},
            response_headers=PAGE_HEADERS,
        ),
        components=Components(
            security_schemes={_BEARER: SecurityScheme(type="http", scheme="bearer")}
            if auth
            else None
        ),
        security=[{_BEARER: []}] if auth else None,
    )


def open_in_schema(app: Litestar, open_paths: Iterable[str]) -> None:
    """Say in the schema that the open paths need no key: an operation's empty `security`
    overrides the document's bearer requirement (litestar drops an empty one per handler, and
    which paths are open is a setting, so it is set on the built schema)."""
    schema = app.openapi_schema
    for path in open_paths:
        item = (schema.paths or {}).get(path)
        if item is None:
            continue
        for method in ("get", "put", "post", "delete", "options", "head", "patch", "trace"):
            if (operation := getattr(item, method)) is not None:
                operation.security = []


def _files(prefix: str, folder: Path, names: tuple[str, ...]) -> HTTPRouteHandler:
    """GET `prefix`/<name> for exactly these files of `folder`: nothing else there is served
    (swagger-ui-bundle also ships Swagger's demo page, which loads a schema from another host)."""
    files = {name: folder / name for name in names}

    @get(
        f"{prefix}/{{name:str}}",
        name=prefix,
        include_in_schema=False,
        opt={PUBLIC: True},
        sync_to_thread=False,
    )
    def static_file(name: str) -> File:
        if name not in files:
            raise NotFoundException(f"no such file: {prefix}/{name}")
        path = files[name]
        return File(
            path,
            content_disposition_type="inline",
            media_type=_MEDIA_TYPES[path.suffix],
            headers=_FILE_HEADERS,
        )

    return static_file


def page_routes(playground: bool) -> list[HTTPRouteHandler]:
    """Swagger UI's files, and the playground with its files unless turned off."""
    routes = [
        _files("/static/swagger-ui", Path(str(swagger_ui_path)), SWAGGER_UI_FILES),
        _files("/static/apidocs", APIDOCS_DIR, ("swagger.js", "swagger.css")),
    ]
    if playground:
        index = (PLAYGROUND_DIR / "index.html").read_bytes()

        @get("/", include_in_schema=False, opt={PUBLIC: True}, sync_to_thread=False)
        def playground_page() -> Response[bytes]:
            """The playground: classify an image, or rank images against a text."""
            return Response(index, media_type=MediaType.HTML, headers=PAGE_HEADERS)

        files = ("playground.js", "playground.css")
        routes += [_files("/static/playground", PLAYGROUND_DIR, files), playground_page]
    return routes
