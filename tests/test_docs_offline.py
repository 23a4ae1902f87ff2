"""The OpenAPI pages work offline: /docs (Swagger UI) and /redoc load every script, style and
icon from the server itself (assets shipped in an installed package), nothing from a CDN."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from reledger.commands.cli import main
from reledger.commands.server import create_app


def test_docs_pages_load_only_local_assets(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    assert main(["init", "--db", url, "--keys", str(tmp_path / "keys")]) == 0
    capsys.readouterr()
    app = create_app(url, projections_process=False, writer_process=False)
    with TestClient(app) as client:
        for page, must in (("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")):
            r = client.get(page)
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
            html = r.text
            assert must in html
            refs = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html) + re.findall(
                r"""url:\s*['"]([^'"]+)['"]""", html)
            assert refs
            external = [u for u in refs if re.match(r"(https?:)?//", u)]
            assert not external, f"{page} loads {external}"
            assert "cdn" not in html.lower() and "fonts.googleapis" not in html
            for ref in refs:
                if ref.startswith("/"):
                    got = client.get(ref)
                    assert got.status_code == 200 and len(got.content) > 100, ref
        # the description the pages show
        assert client.get("/openapi.json").json()["openapi"].startswith("3.")
