"""Init images by URL and the SSRF guard (docs/API.md, "Init images by URL"), black-box: the real
binary against local listeners that record every connection they accept. Everything here is on
loopback, which the guard refuses; the hidden test-only flag --url-fetch-allow-test-host lets
exactly one host:port through so one listener can stand for a public host. No internet."""
import base64
import http.server
import json
import socket
import threading
import time

import pytest

from conftest import png_bytes
from test_server import assert_error, server  # noqa: F401  (server is a fixture)

IMG = png_bytes(32, 32, 3, bytes(range(256)) * 12)
MASK = png_bytes(32, 32, 1, bytes([0] * 512 + [255] * 512))
BODY = {"prompt": "a cat", "steps": 2, "width": 32, "height": 32, "seed": 3, "strength": 0.5}


class Recorder(http.server.ThreadingHTTPServer):
    """An HTTP listener that records every accepted connection and every request's Host header."""
    daemon_threads = True

    def __init__(self, family=socket.AF_INET, host="127.0.0.1"):
        self.address_family = family
        self.connections, self.hosts, self.paths = 0, [], []
        self.lock = threading.Lock()
        self.routes = {}
        super().__init__((host, 0), Handler)
        self.port = self.server_address[1]
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def verify_request(self, request, client_address):
        with self.lock:
            self.connections += 1
        return True


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        srv = self.server
        with srv.lock:
            srv.hosts.append(self.headers.get("Host"))
            srv.paths.append(self.path)
        route = srv.routes.get(self.path.split("?")[0])
        if route is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        route(self)


def send(h, status, body=b"", headers=None, length=True):
    h.send_response(status)
    for k, v in (headers or {}).items():
        h.send_header(k, v)
    if length:
        h.send_header("Content-Length", str(len(body)))
    else:
        h.send_header("Connection", "close")
        h.close_connection = True
    h.end_headers()
    try:
        h.wfile.write(body)
    except OSError:
        pass


@pytest.fixture
def hosts():
    public, other = Recorder(), Recorder()
    try:
        other6 = Recorder(socket.AF_INET6, "::1")
    except OSError:
        other6 = None
    p = public.routes
    p["/img.png"] = lambda h: send(h, 200, IMG, {"Content-Type": "image/png"})
    p["/mask.png"] = lambda h: send(h, 200, MASK, {"Content-Type": "image/png"})
    p["/moved"] = lambda h: send(h, 301, headers={"Location": "/img.png"})
    p["/escape"] = lambda h: send(h, 302, headers={"Location": f"http://127.0.0.1:{other.port}/"})
    p["/escape6"] = lambda h: send(h, 302, headers={"Location": f"http://[::1]:{other6.port if other6 else 1}/"})
    p["/file"] = lambda h: send(h, 302, headers={"Location": "file:///etc/passwd"})
    p["/meta"] = lambda h: send(h, 307, headers={"Location": "http://169.254.169.254/latest/meta-data/"})
    p["/loop"] = lambda h: send(h, 302, headers={"Location": "/loop"})
    p["/text"] = lambda h: send(h, 200, b"hello, not an image", {"Content-Type": "text/plain"})
    p["/gone"] = lambda h: send(h, 410, b"gone")
    p["/big"] = lambda h: send(h, 200, b"\0" * 300_000, {"Content-Type": "image/png"})
    p["/big-stream"] = lambda h: send(h, 200, b"\0" * 300_000, {"Content-Type": "image/png"}, length=False)

    def slow(h):
        time.sleep(4)
        send(h, 200, IMG)
    p["/slow"] = slow
    other.routes["/"] = other.routes["/x.png"] = lambda h: send(h, 200, IMG)
    if other6:
        other6.routes["/"] = lambda h: send(h, 200, IMG)
    yield public, other, other6
    for r in (public, other, other6):
        if r:
            r.shutdown()
            r.server_close()


def fetching_server(server, public, *extra):
    return server("--allow-url-fetch", "--url-fetch-allow-test-host", f"127.0.0.1:{public.port}",
                  "--url-fetch-timeout", "1.5", "--max-body-bytes", "200000", *extra)


def post_img2img(s, **fields):
    status, headers, raw = s.request("POST", "/img2img", dict(BODY, **fields))
    return status, headers, raw


def test_fetch_is_off_by_default(server, hosts):
    public, _, _ = hosts
    s = server()
    for route, field in (("/img2img", "url"), ("/v1/jobs", "init_image_url")):
        status, body = s.json("POST", route, dict(BODY, **{field: f"http://127.0.0.1:{public.port}/img.png"}))
        assert_error(status, body, 403, "--allow-url-fetch")
        assert body["error"] == "url_fetch_disabled"
    assert public.connections == 0


def test_public_url_gives_an_image(server, hosts):
    public, other, _ = hosts
    s = fetching_server(server, public)
    base = f"http://127.0.0.1:{public.port}"
    status, headers, raw = post_img2img(s, url=base + "/img.png")
    assert status == 200, raw
    assert headers["Content-Type"] == "image/png" and raw[:8] == b"\x89PNG\r\n\x1a\n"
    assert public.hosts[-1] == f"127.0.0.1:{public.port}"
    # The same through a redirect, the native job API, and with a mask by URL.
    status, _, raw = post_img2img(s, url=base + "/moved")
    assert status == 200, raw
    status, j = s.json("POST", "/v1/jobs", dict(BODY, init_image_url=base + "/img.png", mask_url=base + "/mask.png"))
    assert status == 202, j
    done = s.wait_job(j["id"])
    assert done["status"] == "succeeded" and done["type"] == "img2img", done
    # A URL and an inline image together is ambiguous.
    init = base64.b64encode(IMG).decode()
    assert_error(*s.json("POST", "/img2img", dict(BODY, url=base + "/img.png", init_image=init)), 400, "both")
    assert other.connections == 0


def test_refused_urls_make_no_connection(server, hosts):
    public, other, other6 = hosts
    s = fetching_server(server, public)
    p6 = other6.port if other6 else other.port
    refused = [
        (f"http://127.0.0.1:{other.port}/x.png", 403, "loopback"),
        ("http://169.254.169.254/latest/meta-data/", 403, "link-local"),
        (f"http://[::1]:{p6}/", 403, "loopback"),
        (f"http://localhost:{other.port}/", 403, "localhost"),
        (f"http://[::ffff:127.0.0.1]:{other.port}/", 403, "IPv4-mapped loopback"),
        (f"http://0.0.0.0:{other.port}/", 403, "unspecified"),
        (f"http://2130706433:{other.port}/", 403, "loopback"),  # 127.0.0.1 as one number
        ("http://metadata.google.internal/computeMetadata/v1/", 403, "metadata"),
        ("file:///etc/passwd", 400, "scheme 'file' is not allowed"),
        (f"gopher://127.0.0.1:{other.port}/_GET%20/", 400, "scheme 'gopher' is not allowed"),
        (f"ftp://127.0.0.1:{other.port}/x", 400, "scheme 'ftp'"),
        (f"http://user:pw@127.0.0.1:{public.port}/img.png", 400, "user information"),
        ("http://example.com/" + "a" * 5000, 400, "longer than"),
        (f"http://127.0.0.1:{public.port}/a b.png", 400, "space"),
        # The allowlisted host redirecting elsewhere: every hop is checked again.
        (f"http://127.0.0.1:{public.port}/escape", 403, "redirected to a refused URL"),
        (f"http://127.0.0.1:{public.port}/escape6", 403, "loopback"),
        (f"http://127.0.0.1:{public.port}/file", 403, "scheme 'file'"),
        (f"http://127.0.0.1:{public.port}/meta", 403, "169.254.169.254"),
    ]
    for url, status, needle in refused:
        st, body = s.json("POST", "/img2img", dict(BODY, url=url))
        assert_error(st, body, status, needle)
        st, body = s.json("POST", "/v1/jobs", dict(BODY, init_image_url=url))
        assert_error(st, body, status, needle)
    assert other.connections == 0, other.paths
    if other6:
        assert other6.connections == 0
    # Only the redirecting routes of the allowlisted host were reached (twice each: both routes).
    assert sorted(set(public.paths)) == ["/escape", "/escape6", "/file", "/meta"], public.paths


def test_upstream_failures_are_422(server, hosts):
    public, _, _ = hosts
    s = fetching_server(server, public)
    base = f"http://127.0.0.1:{public.port}"
    for path, needle in (("/gone", "HTTP status 410"), ("/nothing-here", "HTTP status 404"),
                         ("/loop", "more than 5 redirects"), ("/big", "larger than 200000 bytes"),
                         ("/big-stream", "larger than 200000 bytes")):
        assert_error(*s.json("POST", "/img2img", dict(BODY, url=base + path)), 422, needle)
    t0 = time.time()
    st, body = s.json("POST", "/img2img", dict(BODY, url=base + "/slow"))
    assert_error(st, body, 422, "timed out")
    assert time.time() - t0 < 3.5, "the fetch timeout did not hold"
    assert body["error"] == "url_fetch_failed"
    # Bytes that are not an image: the decoder's own error.
    assert_error(*s.json("POST", "/img2img", dict(BODY, url=base + "/text")), 400, "not a usable image")
    # A port nobody listens on (allowlisted, so the guard lets it through to the connect).
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    s2 = server("--allow-url-fetch", "--url-fetch-allow-test-host", f"127.0.0.1:{port}")
    assert_error(*s2.json("POST", "/img2img", dict(BODY, url=f"http://127.0.0.1:{port}/x.png")), 422, "connect")
    assert s.request("GET", "/health")[0] == 200


def test_https_checks_the_certificate(server, hosts, tmp_path):
    """An https URL is fetched with certificate verification on: a self-signed certificate (not in
    the system store) is refused with 422, the listener sees the TLS attempt but no request."""
    import shutil
    import ssl
    import subprocess
    if not shutil.which("openssl"):
        pytest.skip("no openssl command")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    tls = Recorder()
    tls.routes["/img.png"] = lambda h: send(h, 200, IMG, {"Content-Type": "image/png"})
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    tls.socket = ctx.wrap_socket(tls.socket, server_side=True, do_handshake_on_connect=False)
    try:
        s = server("--allow-url-fetch", "--url-fetch-allow-test-host", f"127.0.0.1:{tls.port}",
                   "--url-fetch-timeout", "3")
        st, body = s.json("POST", "/img2img", dict(BODY, url=f"https://127.0.0.1:{tls.port}/img.png"))
        assert_error(st, body, 422, "TLS certificate of 127.0.0.1 could not be verified")
        assert tls.paths == []
    finally:
        tls.shutdown()
        tls.server_close()
