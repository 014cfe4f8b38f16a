"""The web page's routes from the server's side (the page itself is tested in a browser in tests/web/):
the page is public even with API keys, carries its Content-Security-Policy, never serves a file outside
the page (traversal, hidden files), revalidates with ETags, and --web-dir serves from disk. Also
POST /v1/tokenize, the page's token counter."""
import json

import pytest

from test_server import ServerProcess

KEY = "web-test-key-1234"


@pytest.fixture(scope="module")
def srv(sdserve_bin):
    s = ServerProcess(sdserve_bin, "--api-key", KEY)
    yield s
    s.stop()


def auth():
    return {"Authorization": f"Bearer {KEY}"}


def test_page_is_public_with_a_strict_csp(srv):
    status, hdrs, body = srv.request("GET", "/")
    assert status == 200, body
    assert hdrs["Content-Type"] == "text/html; charset=utf-8"
    csp = hdrs["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "connect-src 'self'" in csp and "unsafe-inline" not in csp
    assert hdrs["X-Content-Type-Options"] == "nosniff" and hdrs["X-Frame-Options"] == "DENY"
    assert b"<html" in body.lower()
    # Every asset the index names is served, as a script/style with the right type.
    etag = hdrs["ETag"]
    status, hdrs, body = srv.request("GET", "/", headers={"If-None-Match": etag})
    assert status == 304 and body == b""
    # HEAD works for the page too.
    assert srv.request("HEAD", "/")[0] == 200


def test_api_routes_still_need_the_key(srv):
    for method, path in [("GET", "/v1/models"), ("POST", "/v1/tokenize"), ("GET", "/metrics"),
                         ("GET", "/sdapi/v1/loras"), ("POST", "/"), ("GET", "/uix")]:
        status, hdrs, body = srv.request(method, path, body=b"{}" if method == "POST" else None)
        assert status == 401, (method, path, body)
        assert json.loads(body)["error"] == "unauthorized"


@pytest.mark.parametrize("path", ["/ui/../../../../etc/passwd", "/ui/..%2f..%2fetc%2fpasswd", "/ui/%2e%2e/x",
                                  "/ui/.git/config", "/ui/js/../../src/server/web.cc", "/ui//etc/passwd",
                                  "/ui/nope.js", "/ui/", "/ui/a%00.js"])
def test_no_file_outside_the_page(srv, path):
    status, hdrs, body = srv.request("GET", path)
    assert status in (400, 401, 404), (path, status, body)
    assert b"root:" not in body and b"#include" not in body
    if status == 404:
        assert set(json.loads(body)) == {"error", "detail"}


def test_web_dir_serves_from_disk(sdserve_bin, tmp_path):
    (tmp_path / "js").mkdir()
    (tmp_path / "index.html").write_text("<!doctype html><html><title>dev</title></html>")
    (tmp_path / "js" / "x.js").write_text("export const x = 1;\n")
    (tmp_path / ".secret").write_text("no")
    s = ServerProcess(sdserve_bin, "--web-dir", tmp_path)
    try:
        status, hdrs, body = s.request("GET", "/")
        assert status == 200 and b"<title>dev</title>" in body and hdrs["Cache-Control"] == "no-store"
        status, hdrs, body = s.request("GET", "/ui/js/x.js")
        assert status == 200 and hdrs["Content-Type"].startswith("text/javascript") and body == b"export const x = 1;\n"
        (tmp_path / "js" / "x.js").write_text("export const x = 2;\n")  # read on every request
        assert s.request("GET", "/ui/js/x.js")[2] == b"export const x = 2;\n"
        assert s.request("GET", "/ui/.secret")[0] == 404
        assert s.request("GET", "/ui/missing.css")[0] == 404
    finally:
        s.stop()


def test_web_dir_must_exist(run, tmp_path):
    p = run("serve", "--model", "demo", "--web-dir", tmp_path / "missing")
    assert p.returncode != 0
    lines = p.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "--web-dir" in lines[0], p.stderr


def test_tokenize_counts_like_a1111(srv):
    def count(prompt):
        status, r = srv.json("POST", "/v1/tokenize", {"prompt": prompt}, headers=auth())
        assert status == 200, r
        return r

    # The tiny test model has its own small vocabulary, so counts are compared with each other.
    assert count("") == {"tokens": 0, "chunks": 1, "limit": 75}
    plain = count("a photo of a cat")
    assert 0 < plain["tokens"] < 75 and plain["limit"] == 75
    # emphasis and LoRA tags are not tokens
    assert count("a (photo:1.2) of [a] cat <lora:whatever:0.8>") == plain
    # BREAK closes the first chunk: it counts 75
    dog = count("a dog")["tokens"]
    assert count("a cat BREAK a dog") == {"tokens": 75 + dog, "chunks": 2, "limit": 150}
    long = count(" ".join(["cat"] * 80))
    assert long["tokens"] >= 80 and long["limit"] == -(-long["tokens"] // 75) * 75 and long["chunks"] >= 2
    for body, needle in [({}, "prompt"), ({"prompt": 3}, "prompt"), ({"prompt": "x" * 20001}, "prompt")]:
        status, r = srv.json("POST", "/v1/tokenize", body, headers=auth())
        assert status == 400 and needle in r["detail"], r
    status, hdrs, raw = srv.request("POST", "/v1/tokenize", b"{not json", headers=auth())
    assert status == 400 and json.loads(raw)["error"] == "invalid_argument"
