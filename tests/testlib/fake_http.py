"""HTTP pieces the fake hubs share (tests/e2e/test_pull.py, tests/deploy/fakes.py)."""


def start_ranged(handler, data, extra=None, accept_ranges=False):
    """Answers a GET of `data` on a BaseHTTPRequestHandler, honouring `Range: bytes=N-` as the hub's
    CDN does: 206 with Content-Range from N, 416 when N is past the end (answered in full; returns
    None), else 200. Sends the status and headers (plus `extra`) and returns the body to write."""
    rng = handler.headers.get("Range")
    start = 0
    if rng and rng.startswith("bytes=") and rng.endswith("-"):
        start = int(rng[6:-1])
        if start >= len(data):
            handler.send_response(416)
            handler.send_header("Content-Range", f"bytes */{len(data)}")
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return None
        handler.send_response(206)
        handler.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
    else:
        handler.send_response(200)
    body = data[start:]
    handler.send_header("Content-Length", str(len(body)))
    if accept_ranges:
        handler.send_header("Accept-Ranges", "bytes")
    for k, v in (extra or {}).items():
        handler.send_header(k, v)
    handler.end_headers()
    return body
