"""`sdserve serve` on 127.0.0.1 and a free port (`--port 0`; the port comes from the JSON log), with
a plain http.client so the bytes on the wire are what the tests see."""
import http.client
import json
import subprocess
import threading
import time


class SdserveServer:
    """Starts `BINARY serve [--model MODEL] --host 127.0.0.1 --port 0 ARGS...` and, unless
    wait_ready=False, waits until /health answers 200."""

    json_content_type = False  # send Content-Type: application/json with JSON bodies
    request_timeout = 120

    def __init__(self, binary, *args, model=None, wait_ready=True, env=None):
        model_args = [] if model is None else ["--model", str(model)]  # None: --models-dir picks
        self.proc = subprocess.Popen([binary, "serve", *model_args, "--host", "127.0.0.1", "--port", "0",
                                      *map(str, args)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        self.log, self.port = [], None
        got_port = threading.Event()

        def reader():
            for line in self.proc.stderr:
                text = line.decode("utf-8", "replace").rstrip("\n")
                self.log.append(text)
                try:
                    rec = json.loads(text)
                except ValueError:
                    continue
                if rec.get("msg") == "listening":
                    self.port = rec["port"]
                    got_port.set()
            got_port.set()

        threading.Thread(target=reader, daemon=True).start()
        assert got_port.wait(30) and self.port, "server did not start:\n" + "\n".join(self.log)
        self.url = f"http://127.0.0.1:{self.port}"
        if wait_ready:
            deadline = time.time() + 60
            while self.request("GET", "/health")[0] != 200:
                assert time.time() < deadline, "model never became ready:\n" + "\n".join(self.log)
                time.sleep(0.05)

    def request(self, method, path, body=None, headers=None, timeout=None):
        """(status, headers dict, body bytes); a body that is not bytes/str is sent as JSON."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout or self.request_timeout)
        data = body if isinstance(body, (bytes, str)) or body is None else json.dumps(body)
        hdrs = dict(headers or {})
        if self.json_content_type and data is not None and not isinstance(body, (bytes, str)):
            hdrs["Content-Type"] = "application/json"
        if method == "POST" and data is None:
            data = b""
        conn.request(method, path, body=data, headers=hdrs)
        r = conn.getresponse()
        out = (r.status, dict(r.getheaders()), r.read())
        conn.close()
        return out

    def json(self, method, path, body=None, headers=None):
        status, _, raw = self.request(method, path, body, headers)
        return status, (json.loads(raw) if raw else None)

    def wait_job(self, job_id, until=None, headers=None, timeout=120):
        """Polls /v1/jobs/ID until its status is in `until` (default: anything but queued/running)."""
        deadline = time.time() + timeout
        while True:
            status, j = self.json("GET", f"/v1/jobs/{job_id}", headers=headers)
            assert status == 200, j
            if (j["status"] in until) if until else (j["status"] not in ("queued", "running")):
                return j
            assert time.time() < deadline, j
            time.sleep(0.02)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
