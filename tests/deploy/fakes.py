"""Local stand-ins for what an EC2 instance talks to, for the deploy tests: a Hugging Face hub (the
listing API and `resolve` URLs with LFS redirects, X-Linked-Etag checksums and byte ranges, adapted
from tests/e2e/test_pull.py), a static file server (the release tarball), the instance metadata
service (IMDSv2 tokens, lifecycle state, Spot notices, tags) and an `aws` CLI that records its
calls. Nothing here touches the network beyond 127.0.0.1."""
import hashlib
import http.server
import json
import os
import pathlib
import socket
import stat
import sys
import threading
import urllib.parse

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))  # tests/testlib
from testlib.fake_http import start_ranged  # noqa: E402
TINY = ROOT / "tests" / "fixtures" / "models" / "sd1-tiny"
HUB_SHA = "0123456789abcdef0123456789abcdef01234567"


def tiny_repo_files():
    """The tiny SD1 diffusers model as a hub repo, plus files a pipeline pull must leave alone."""
    files = {str(p.relative_to(TINY)): p.read_bytes() for p in sorted(TINY.rglob("*")) if p.is_file()}
    files["unet/diffusion_pytorch_model.bin"] = b"PICKLE" * 10
    files["README.md"] = b"# tiny\n"
    return files


class _Server:
    def __init__(self, handler):
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class Hub(_Server):
    """A fake hub on 127.0.0.1 serving test-org/sd1-tiny at commit HUB_SHA."""

    def __init__(self):
        self.repos = {"test-org/sd1-tiny": {"sha": HUB_SHA, "files": tiny_repo_files()}}
        self.requests = []
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def send_body(self, data, extra=None):
                body = start_ranged(self, data, extra)
                if body is not None:
                    self.wfile.write(body)

            def error(self, status):
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def do_GET(self):
                hub.requests.append(self.path)
                parts = urllib.parse.unquote(self.path.split("?")[0]).strip("/").split("/")
                if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] == "revision":
                    r = hub.repos.get("/".join(parts[2:4]))
                    if r is None:
                        return self.error(401)
                    body = json.dumps({"id": "/".join(parts[2:4]), "sha": r["sha"],
                                       "siblings": [{"rfilename": f} for f in r["files"]]}).encode()
                    return self.send_body(body, {"Content-Type": "application/json"})
                if len(parts) >= 5 and parts[2] == "resolve":
                    repo, name = "/".join(parts[:2]), "/".join(parts[4:])
                    r = hub.repos.get(repo)
                    if r is None or name not in r["files"]:
                        return self.error(404)
                    data = r["files"][name]
                    if name.endswith(".safetensors"):  # LFS: redirect to the "CDN" with the hub's headers
                        sha = hashlib.sha256(data).hexdigest()
                        self.send_response(302)
                        self.send_header("Location", f"/cdn/{repo}/{name}")
                        self.send_header("X-Linked-Size", str(len(data)))
                        self.send_header("X-Linked-Etag", f'"{sha}"')
                        self.send_header("X-Repo-Commit", r["sha"])
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    return self.send_body(data, {"ETag": '"' + hashlib.sha1(data).hexdigest() + '"'})
                if parts[0] == "cdn":
                    return self.send_body(hub.repos["/".join(parts[1:3])]["files"]["/".join(parts[3:])])
                return self.error(404)

        super().__init__(Handler)


class FileServer(_Server):
    """Serves the files of one folder (the release tarball) with byte ranges; counts requests."""

    def __init__(self, folder):
        folder = pathlib.Path(folder)
        self.requests = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                outer.requests.append(self.path)
                path = folder / urllib.parse.unquote(self.path.split("?")[0]).lstrip("/")
                if not path.is_file() or folder not in path.resolve().parents:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = path.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        super().__init__(Handler)


class Imds(_Server):
    """IMDSv2: PUT /latest/api/token, then GETs with the token. `values` maps metadata paths (after
    /latest/) to their text; a missing path is 404 (as the Spot notice is until one is issued)."""

    def __init__(self):
        self.values = {
            "meta-data/instance-id": "i-0123456789abcdef0",
            "meta-data/placement/region": "us-east-1",
            "meta-data/autoscaling/target-lifecycle-state": "InService",
            "meta-data/tags/instance/aws:autoscaling:groupName": "sd-test-asg",
        }
        self.tokenless = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def reply(self, status, body=b""):
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_PUT(self):
                if self.path == "/latest/api/token" and self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
                    return self.reply(200, b"test-token")
                return self.reply(400)

            def do_GET(self):
                if self.headers.get("X-aws-ec2-metadata-token") != "test-token":
                    outer.tokenless += 1
                    return self.reply(401)  # IMDSv1 is off (HttpTokens: required)
                value = outer.values.get(self.path.removeprefix("/latest/"))
                return self.reply(200, value.encode()) if value is not None else self.reply(404)

        super().__init__(Handler)


def fake_aws(folder, replies=()):
    """Writes an `aws` executable into `folder` that appends its arguments (one JSON list per line)
    to folder/aws-calls.jsonl. `replies` is a list of (fragments, stdout, exit status): the first
    entry whose fragments all occur among the arguments (joined by spaces) answers; otherwise it
    prints nothing and exits 0. Returns the path of the calls file."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    calls = folder / "aws-calls.jsonl"
    (folder / "aws-replies.json").write_text(json.dumps([list(r) for r in replies]))
    script = folder / "aws"
    script.write_text(f"""#!/usr/bin/env python3
import json, sys
with open({str(calls)!r}, "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
line = " ".join(sys.argv[1:])
for fragments, out, status in json.load(open({str(folder / "aws-replies.json")!r})):
    if all(x in line for x in fragments):
        if out:
            print(out)
        sys.exit(status)
""")
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return calls


def read_calls(calls):
    if not pathlib.Path(calls).exists():
        return []
    return [json.loads(line) for line in pathlib.Path(calls).read_text().splitlines()]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def clean_env(tmp_path, **extra):
    """The environment for scripts under test: no SDSERVE_/HF_/AWS_ leftovers from the caller."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SDSERVE_", "HF_", "AWS_", "XDG_"))}
    home = pathlib.Path(tmp_path) / "home"
    home.mkdir(exist_ok=True)
    env.update(HOME=str(home), OMP_NUM_THREADS="2", OMP_WAIT_POLICY="passive")
    env.update({k: str(v) for k, v in extra.items()})
    return env
