"""The pages over HTTP: served from the package, relative URLs only, open without a key, behind
a prefix, off with --no-playground, and shipped in the wheel."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx
import pytest

from tests.pages.conftest import API_KEY
from tests.support.proxy import Proxy
from tests.support.server import Server, start_server

ROOT = Path(__file__).parents[2]
LINKS = re.compile(rb"""(?:src|href)="([^"]*)\"""")
PAGE_FILES = {
    "clipserve/http/playground/index.html",
    "clipserve/http/playground/playground.js",
    "clipserve/http/playground/playground.css",
    "clipserve/http/apidocs/swagger.html",
    "clipserve/http/apidocs/swagger.js",
    "clipserve/http/apidocs/swagger.css",
}


def links(html: bytes) -> list[str]:
    return [m.decode() for m in LINKS.findall(html)]


def assert_page_and_its_files_load(client: httpx.Client, page_url: str) -> list[str]:
    """GET a page, then every file it links; all relative, all 200. Returns the links."""
    page = client.get(page_url)
    assert page.status_code == 200, page_url
    assert page.headers["content-type"].startswith("text/html")
    assert "connect-src 'self'" in page.headers["content-security-policy"]
    found = links(page.content)
    assert found, page_url
    for link in found:
        if link.startswith("data:"):  # inline (the blank favicon): no request at all
            continue
        # relative: no scheme, no host, no leading "/" that would escape a path prefix
        assert not urlsplit(link).scheme and not link.startswith("/"), link
        loaded = client.get(urljoin(page_url, link))
        assert loaded.status_code == 200, (page_url, link)
        kind = loaded.headers["content-type"]
        if link.endswith(".js"):  # nosniff: only a script type runs
            assert kind.startswith("text/javascript"), (link, kind)
        elif link.endswith(".css"):
            assert kind.startswith("text/css"), (link, kind)
    return found


def test_playground_and_its_files_are_served_with_relative_urls(server: Server):
    with server.client() as c:
        found = assert_page_and_its_files_load(c, server.url + "/")
    assert "static/playground/playground.js" in found and "schema/swagger" in found


def test_only_the_files_the_pages_load_are_served(server: Server):
    with server.client() as c:
        served = c.get("/static/swagger-ui/swagger-ui-bundle.js")
        others = [
            c.get(path).status_code
            for path in (
                "/static/swagger-ui/index.html",  # Swagger's demo: loads a schema from elsewhere
                "/static/swagger-ui/swagger-initializer.js",
                "/static/playground/index.html",
                "/static/playground/..%2F..%2Fpages.py",
                "/static/apidocs/swagger.html",
            )
        ]
    assert served.status_code == 200 and served.headers["x-content-type-options"] == "nosniff"
    assert served.headers["content-type"].startswith("text/javascript")
    assert others == [404] * len(others)


@pytest.mark.parametrize("path", ["/schema", "/schema/swagger", "/schema/swagger/"])
def test_swagger_ui_comes_from_this_server_at_any_depth(server: Server, path: str):
    with server.client() as c:
        found = assert_page_and_its_files_load(c, server.url + path)
        page = c.get(path).text
        spec = c.get("/schema/openapi.json").json()
    assert any(f.endswith("static/swagger-ui/swagger-ui-bundle.js") for f in found)
    assert "cdn" not in page.lower()
    # without an API key there is nothing to authorize
    assert "securitySchemes" not in spec.get("components", {}) and "security" not in spec


def test_pages_work_behind_a_prefix_stripping_proxy(proxy: Proxy):
    with httpx.Client(timeout=60) as c:
        assert_page_and_its_files_load(c, proxy.url)
        assert_page_and_its_files_load(c, proxy.url + "schema/swagger")
        # outside the prefix, nginx answers, not clipserve: an escaped URL would fail
        assert c.get(proxy.origin + "/static/playground/playground.js").status_code == 404
        ranked = c.post(
            proxy.url + "rank",
            json={"queries": [{"text": "a dog"}], "candidates": [{"text": "a"}, {"text": "b"}]},
        )
    assert ranked.status_code == 200 and len(ranked.json()["probabilities"][0]) == 2


OPEN_PATHS = ("/healthz", "/readyz", "/metrics")  # the default --open-paths


def test_pages_open_without_the_key_while_the_api_needs_it(keyed_server: Server):
    with keyed_server.client() as c:
        assert_page_and_its_files_load(c, keyed_server.url + "/")
        assert_page_and_its_files_load(c, keyed_server.url + "/schema/swagger")
        spec = c.get("/schema/openapi.json")
        assert c.post("/encode", json=[{"text": "a"}]).status_code == 401
        assert c.get("/models").status_code == 401
        open_codes = {path: c.get(path).status_code for path in OPEN_PATHS}
        authorized = c.post(
            "/encode", json=[{"text": "a"}], headers={"Authorization": f"Bearer {API_KEY}"}
        )
    assert authorized.status_code == 200
    assert spec.status_code == 200
    # Swagger UI's Authorize button: a bearer scheme required by the API
    schema = spec.json()
    assert schema["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}
    assert schema["security"] == [{"bearer": []}]
    # ... but not by the open paths: their operations say so, as the server does
    assert open_codes == dict.fromkeys(OPEN_PATHS, 200)
    for path in OPEN_PATHS:
        assert schema["paths"][path]["get"]["security"] == [], path
    assert "security" not in schema["paths"]["/encode"]["post"]


def test_no_playground_turns_the_page_and_its_files_off():
    srv = start_server("--no-playground")
    try:
        with srv.client() as c:
            assert c.get("/").status_code == 404
            assert c.get("/static/playground/playground.js").status_code == 404
            swagger = assert_page_and_its_files_load(c, srv.url + "/schema/swagger")
    finally:
        srv.stop()
    assert not any(link.endswith("./") for link in swagger), "a link to the missing playground"


@pytest.mark.slow
def test_a_non_editable_install_ships_and_serves_the_pages(tmp_path: Path):
    # the distribution's own build backend (service/pyproject.toml), as `pip wheel ./service` would,
    # on a copy (a build writes build/ and *.egg-info beside its sources)
    src = tmp_path / "src"
    shutil.copytree(ROOT / "service", src, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    build = "import sys, setuptools.build_meta as b; print(b.build_wheel(sys.argv[1]))"
    subprocess.run(
        [sys.executable, "-c", build, str(tmp_path / "dist")],
        cwd=src,
        check=True,
        capture_output=True,
        timeout=600,
    )
    (wheel,) = (tmp_path / "dist").glob("clipserve-*.whl")
    target = tmp_path / "site"
    with zipfile.ZipFile(wheel) as whl:  # a pure-Python wheel installs by unpacking
        whl.extractall(target)
    shipped = {str(p.relative_to(target)) for p in (target / "clipserve").rglob("*.*")}
    assert shipped >= PAGE_FILES
    env = {"PYTHONPATH": str(target)}  # ahead of the editable install of this checkout
    where = subprocess.run(
        [sys.executable, "-c", "import clipserve; print(clipserve.__file__)"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert where.startswith(str(target)), where
    srv = start_server(env=env)
    try:
        with srv.client() as c:
            assert_page_and_its_files_load(c, srv.url + "/")
            assert_page_and_its_files_load(c, srv.url + "/schema/swagger")
    finally:
        srv.stop()
