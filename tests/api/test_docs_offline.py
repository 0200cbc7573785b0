"""/docs and /redoc load nothing from outside the service (Swagger UI and ReDoc come
from a package), and the OpenAPI document gives every work route its error answers
with the one error body, which real error answers match."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from embquant.api import create_app
from embquant.api.errors import ErrorBody
from embquant.settings import Settings


@pytest.fixture(scope="module")
def client():
    with TestClient(create_app(Settings(device="cpu", max_body_bytes=64 * 1024))) as c:
        yield c


def referenced(html: str) -> list[str]:
    """Every URL a page loads: src=, href=, ReDoc's spec-url= and Swagger UI's url: '...'."""
    urls = re.findall(r'''(?:src|href|spec-url)\s*=\s*["']([^"']+)["']''', html)
    urls += re.findall(r'''\burl:\s*['"]([^'"]+)['"]''', html)
    return urls


@pytest.mark.parametrize("page, asset_kinds", [
    ("/docs", {"/docs/static/swagger-ui-bundle.js": "javascript", "/docs/static/swagger-ui.css": "text/css",
               "/docs/static/favicon.png": "image/png", "/openapi.json": "application/json"}),
    ("/redoc", {"/docs/static/redoc.standalone.js": "javascript", "/docs/static/favicon.png": "image/png",
                "/openapi.json": "application/json"}),
])
def test_pages_load_only_local_urls_and_every_one_is_served(client, page, asset_kinds):
    r = client.get(page)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    assert "http://" not in html and "https://" not in html and "//cdn" not in html
    urls = referenced(html)
    assert set(urls) == set(asset_kinds), urls
    for url in urls:
        assert url.startswith("/") and not url.startswith("//"), url
        a = client.get(url)
        assert a.status_code == 200 and len(a.content) > 1000, url
        assert asset_kinds[url] in a.headers["content-type"], (url, a.headers["content-type"])
    if page == "/docs":
        assert "SwaggerUIBundle" in client.get("/docs/static/swagger-ui-bundle.js").text
        assert '"validatorUrl": null' in html  # no badge fetched from validator.swagger.io
    else:
        assert "Redoc" in client.get("/docs/static/redoc.standalone.js").text[:2_000_000]


def test_work_routes_document_their_errors(client):
    doc = client.get("/openapi.json").json()
    body = doc["components"]["schemas"]["ErrorBody"]
    assert body["required"] == ["error"]
    detail = doc["components"]["schemas"]["ErrorDetail"]
    assert set(detail["required"]) == {"type", "message"}
    for path in ("/fit", "/quantize", "/dequantize", "/score", "/evaluate"):
        responses = doc["paths"][path]["post"]["responses"]
        for status in ("400", "401", "408", "413", "415", "429", "500", "503", "504"):
            r = responses[status]
            assert r["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}, (path, status)
            assert r["description"], (path, status)
        assert ("404" in responses) == (path not in ("/fit", "/evaluate"))  # only routes that take a codec_id
    assert "Retry-After" in doc["paths"]["/quantize"]["post"]["responses"]["429"]["description"]


def test_real_error_answers_match_the_documented_body(client):
    answers = [
        client.post("/quantize", json={"vectors": [[1.0], [1.0, 2.0]], "scheme": "absmax"}),  # 400 ragged
        client.post("/quantize", json={"vectors": [[1.0, 2.0]], "scheme": "nope"}),  # 400 unknown_scheme
        client.post("/dequantize", json={"codes": [[1]], "codec_id": "0" * 64}),  # 404 unknown_codec
        client.post("/quantize", content=b"x" * 70_000, headers={"content-type": "application/json"}),  # 413
        client.post("/score", content=b"{}", headers={"content-type": "text/csv"}),  # 415
    ]
    assert [a.status_code for a in answers] == [400, 400, 404, 413, 415]
    for a in answers:
        e = ErrorBody.model_validate(a.json()).error
        assert e.type and e.message
    assert [ErrorBody.model_validate(a.json()).error.type for a in answers] == [
        "validation", "unknown_scheme", "unknown_codec", "payload_too_large", "unsupported_media_type"]
