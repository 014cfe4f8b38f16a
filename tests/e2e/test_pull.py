"""`sdserve pull`, the default model of `serve` and `--model demo`, black-box. A local threaded HTTP
server plays the Hugging Face hub (the model listing API, `resolve` URLs that redirect LFS files to a
CDN with X-Linked-Size/X-Linked-Etag, byte ranges); nothing here touches the internet."""
import hashlib
import http.client
import http.server
import json
import os
import pathlib
import socket
import subprocess
import threading
import time
import urllib.parse

import pytest

from conftest import FIXTURES, decode_png
from testlib.fake_http import start_ranged

TINY = FIXTURES / "models" / "sd1-tiny"
SHA = "0123456789abcdef0123456789abcdef01234567"


def tiny_repo_files():
    files = {str(p.relative_to(TINY)): p.read_bytes() for p in sorted(TINY.rglob("*")) if p.is_file()}
    # What a real repo also has and a pipeline pull must leave alone.
    files["unet/diffusion_pytorch_model.bin"] = b"PICKLE" * 10
    files["safety_checker/model.safetensors"] = b"x" * 64
    files["v1-5-pruned.ckpt"] = b"PICKLE"
    files["README.md"] = b"# tiny\n"
    return files


class Hub:
    """A threaded fake hub on 127.0.0.1. Options (per test): drop_once = files whose first download is
    cut after half the bytes; bad_etag = files whose X-Linked-Etag is wrong; private = repos that need
    `Authorization: Bearer secret-token`."""

    def __init__(self):
        self.repos = {"test-org/sd1-tiny": {"sha": SHA, "files": tiny_repo_files()}}
        self.plain = {}
        self.drop_once, self.dropped, self.bad_etag, self.private = set(), set(), set(), set()
        self.requests = []  # (path, headers dict)
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def send_body(self, data, name, extra=None):
                body = start_ranged(self, data, extra, accept_ranges=True)
                if body is None:
                    return
                if name in hub.drop_once and name not in hub.dropped:
                    hub.dropped.add(name)
                    self.wfile.write(body[:len(body) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(body)

            def error(self, status, code=None):
                self.send_response(status)
                if code:
                    self.send_header("X-Error-Code", code)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def do_GET(self):
                hub.requests.append((self.path, dict(self.headers)))
                path = urllib.parse.unquote(self.path.split("?")[0])
                parts = path.strip("/").split("/")
                if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] == "revision":
                    repo = "/".join(parts[2:4])
                    if repo not in hub.repos:
                        return self.error(401, "RepoNotFound")
                    if repo in hub.private and self.headers.get("Authorization") != "Bearer secret-token":
                        return self.error(401, "GatedRepo")
                    r = hub.repos[repo]
                    body = json.dumps({"id": repo, "sha": r["sha"],
                                       "siblings": [{"rfilename": f} for f in r["files"]]}).encode()
                    return self.send_body(body, None, {"Content-Type": "application/json"})
                if len(parts) >= 5 and parts[2] == "resolve":
                    repo, name = "/".join(parts[:2]), "/".join(parts[4:])
                    r = hub.repos.get(repo)
                    if r is None or name not in r["files"]:
                        return self.error(404, "EntryNotFound")
                    if repo in hub.private and self.headers.get("Authorization") != "Bearer secret-token":
                        return self.error(401, "GatedRepo")
                    data = r["files"][name]
                    if name.endswith(".safetensors"):  # LFS: redirect to the "CDN" with the hub's headers
                        sha = hashlib.sha256(data).hexdigest()
                        etag = "0" * 64 if name in hub.bad_etag else sha
                        self.send_response(302)
                        self.send_header("Location", f"/cdn/{repo}/{name}")
                        self.send_header("X-Linked-Size", str(len(data)))
                        self.send_header("X-Linked-Etag", f'"{etag}"')
                        self.send_header("ETag", f'"{etag}"')
                        self.send_header("X-Repo-Commit", r["sha"])
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    return self.send_body(data, name, {"ETag": '"' + hashlib.sha1(data).hexdigest() + '"'})
                if parts[0] == "cdn":
                    repo, name = "/".join(parts[1:3]), "/".join(parts[3:])
                    return self.send_body(hub.repos[repo]["files"][name], name)
                if parts[0] == "plain" and parts[-1] in hub.plain:
                    return self.send_body(hub.plain[parts[-1]], parts[-1])
                return self.error(404)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def seen(self, fragment):
        return [h for p, h in self.requests if fragment in urllib.parse.unquote(p)]


@pytest.fixture
def hub():
    h = Hub()
    yield h
    h.close()


def closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture
def env(tmp_path):
    """A clean environment: empty HOME and cache, no token, quick retries."""
    e = {k: v for k, v in os.environ.items()
         if not k.startswith(("HF_", "SDSERVE_", "XDG_")) and k not in ("HUGGING_FACE_HUB_TOKEN",)}
    e.update(HOME=str(tmp_path / "home"), SDSERVE_PULL_BACKOFF_S="0.05", OMP_NUM_THREADS="2")
    (tmp_path / "home").mkdir()
    return e


def sdserve(sdserve_bin, env, *args, timeout=120):
    return subprocess.run([sdserve_bin, *map(str, args)], env=env, capture_output=True, timeout=timeout)


def last_error(proc):
    assert proc.returncode != 0, proc.stderr
    line = proc.stderr.decode().strip().splitlines()[-1]
    assert line.startswith("sdserve: error: "), proc.stderr
    return line


def pull(sdserve_bin, env, hub, cache, *args):
    return sdserve(sdserve_bin, env, "pull", *args, "--endpoint", hub.url, "--cache-dir", cache)


# ------------------------------------------------------------------------------------- repos

def test_pull_repo_is_byte_identical_and_loads(sdserve_bin, env, hub, tmp_path):
    cache = tmp_path / "cache"
    p = pull(sdserve_bin, env, hub, cache, "test-org/sd1-tiny")
    assert p.returncode == 0, p.stderr
    path = pathlib.Path(p.stdout.decode().strip().splitlines()[-1])
    assert path == cache / "models--test-org--sd1-tiny" / "snapshots" / SHA
    assert (cache / "models--test-org--sd1-tiny" / "refs" / "main").read_text().strip() == SHA
    got = sorted(str(f.relative_to(path)) for f in path.rglob("*") if f.is_file() and f.name != ".sdserve-complete")
    want = sorted(str(f.relative_to(TINY)) for f in TINY.rglob("*") if f.is_file())
    assert got == want
    for name in want:
        assert (path / name).read_bytes() == (TINY / name).read_bytes(), name
    # Pickles, the safety checker and top-level checkpoints are never fetched.
    assert not hub.seen(".bin") and not hub.seen(".ckpt") and not hub.seen("safety_checker")
    # Files are fetched by commit, not by branch.
    assert hub.seen(f"/resolve/{SHA}/unet/") and not hub.seen("/resolve/main/")

    out = tmp_path / "out.png"
    g = sdserve(sdserve_bin, env, "generate", "--model", path, "--prompt", "a red barn", "--steps", "2",
                "--width", "32", "--height", "32", "--seed", "1", "--output", out)
    assert g.returncode == 0, g.stderr
    assert decode_png(out)[:3] == (32, 32, 3)

    # The repo id now resolves from the cache with no network (the endpoint is a closed port).
    env2 = dict(env, SDSERVE_CACHE_DIR=str(cache), HF_ENDPOINT=f"http://127.0.0.1:{closed_port()}")
    g = sdserve(sdserve_bin, env2, "generate", "--model", "test-org/sd1-tiny", "--prompt", "x", "--steps", "1",
                "--width", "32", "--height", "32", "--output", tmp_path / "again.png")
    assert g.returncode == 0, g.stderr

    # A second pull downloads nothing new.
    n = len(hub.seen("/resolve/"))
    p = pull(sdserve_bin, env, hub, cache, "test-org/sd1-tiny")
    assert p.returncode == 0 and len(hub.seen("/resolve/")) == n


def test_pull_hostile_listing_stays_in_the_cache(sdserve_bin, env, hub, tmp_path):
    """A listing whose file names try to leave the snapshot folder: those names are dropped (never
    requested, never written), the legitimate files still arrive, and nothing appears outside."""
    files = dict(tiny_repo_files())
    evil = ["../../../evil.safetensors", "/tmp/abs-evil.safetensors", "unet/../../evil2.safetensors",
            "unet//x.safetensors", "vae/./y.safetensors", "text_encoder/..\\z.safetensors"]
    for name in evil:
        files[name] = b"EVIL"
    hub.repos["test-org/hostile"] = {"sha": SHA, "files": files}
    cache = tmp_path / "cache"
    p = pull(sdserve_bin, env, hub, cache, "test-org/hostile")
    assert p.returncode == 0, p.stderr
    path = pathlib.Path(p.stdout.decode().strip().splitlines()[-1])
    assert path.is_relative_to(cache)
    written = [f for f in tmp_path.rglob("*") if f.is_file()]
    assert all(f.is_relative_to(path) or f.is_relative_to(cache) for f in written), written
    assert not any(f.read_bytes() == b"EVIL" for f in written)
    assert not pathlib.Path("/tmp/abs-evil.safetensors").exists()
    assert not hub.seen("evil"), hub.seen("evil")  # the escaping names were never even requested


def test_pull_resumes_a_dropped_connection(sdserve_bin, env, hub, tmp_path):
    name = "unet/diffusion_pytorch_model.safetensors"
    hub.drop_once = {name, "model_index.json"}
    cache = tmp_path / "cache"
    p = pull(sdserve_bin, env, hub, cache, "test-org/sd1-tiny")
    assert p.returncode == 0, p.stderr
    assert name in hub.dropped and "model_index.json" in hub.dropped
    ranged = [h for h in hub.seen("/cdn/test-org/sd1-tiny/" + name) if "Range" in h]
    assert ranged and ranged[0]["Range"].startswith("bytes=") and ranged[0]["Range"] != "bytes=0-"
    assert any("Range" in h for h in hub.seen("/resolve/" + SHA + "/model_index.json"))
    path = pathlib.Path(p.stdout.decode().strip().splitlines()[-1])
    assert (path / name).read_bytes() == (TINY / name).read_bytes()
    assert (path / "model_index.json").read_bytes() == (TINY / "model_index.json").read_bytes()
    assert not list(path.rglob("*.part"))
    assert "retrying" in p.stderr.decode()


def test_pull_resumes_an_interrupted_run(sdserve_bin, env, hub, tmp_path):
    """A .part left by an earlier run (Ctrl-C) is continued with a Range request."""
    cache = tmp_path / "cache"
    name = "vae/diffusion_pytorch_model.safetensors"
    data = (TINY / name).read_bytes()
    part = cache / "models--test-org--sd1-tiny" / "snapshots" / SHA / (name + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(data[:1000])
    p = pull(sdserve_bin, env, hub, cache, "test-org/sd1-tiny")
    assert p.returncode == 0, p.stderr
    assert [h["Range"] for h in hub.seen("/cdn/test-org/sd1-tiny/" + name)] == ["bytes=1000-"]
    assert (part.parent / "diffusion_pytorch_model.safetensors").read_bytes() == data


def test_pull_checksum_mismatch_deletes_the_file(sdserve_bin, env, hub, tmp_path):
    name = "vae/diffusion_pytorch_model.safetensors"
    hub.bad_etag = {name}
    cache = tmp_path / "cache"
    p = pull(sdserve_bin, env, hub, cache, "test-org/sd1-tiny")
    line = last_error(p)
    assert p.returncode == 4 and "SHA-256 mismatch" in line and name in line
    snap = cache / "models--test-org--sd1-tiny" / "snapshots" / SHA
    assert not (snap / name).exists() and not (snap / (name + ".part")).exists()
    assert not (cache / "models--test-org--sd1-tiny" / "refs" / "main").exists()


def test_pull_offline_is_one_line(sdserve_bin, env, tmp_path):
    port = closed_port()
    p = sdserve(sdserve_bin, env, "pull", "test-org/sd1-tiny", "--endpoint", f"http://127.0.0.1:{port}",
                "--cache-dir", tmp_path / "cache")
    lines = p.stderr.decode().strip().splitlines()
    assert p.returncode == 6 and len(lines) == 1, p.stderr
    assert f"127.0.0.1:{port}" in lines[0] and "--model demo" in lines[0]
    # An unresolvable host name says so.
    p = sdserve(sdserve_bin, env, "pull", "test-org/sd1-tiny", "--endpoint", "http://no-such-host.invalid",
                "--cache-dir", tmp_path / "cache")
    line = last_error(p)
    assert "no-such-host.invalid" in line and "--model demo" in line


def test_pull_not_found_and_denied(sdserve_bin, env, hub, tmp_path):
    cache = tmp_path / "cache"
    p = pull(sdserve_bin, env, hub, cache, "test-org/nope")
    line = last_error(p)
    assert p.returncode == 3 and "test-org/nope" in line and "not found" in line
    p = pull(sdserve_bin, env, hub, cache, "test-org/sd1-tiny/missing.safetensors")
    line = last_error(p)
    assert p.returncode == 3 and "missing.safetensors" in line
    hub.private = {"test-org/sd1-tiny"}
    p = pull(sdserve_bin, env, hub, cache, "test-org/sd1-tiny")
    line = last_error(p)
    assert "HF_TOKEN" in line and "401" in line
    # With the token (sent as a Bearer header) it works.
    p = pull(sdserve_bin, dict(env, HF_TOKEN="secret-token"), hub, cache, "test-org/sd1-tiny")
    assert p.returncode == 0, p.stderr


def test_pull_single_file_of_a_repo(sdserve_bin, env, hub, tmp_path):
    hub.repos["test-org/ckpt"] = {"sha": "f" * 40, "files": {
        "sd1-tiny.safetensors": (FIXTURES / "models" / "sd1-tiny.safetensors").read_bytes(),
        "sd1-tiny.ckpt": b"PICKLE"}}
    cache = tmp_path / "cache"
    p = pull(sdserve_bin, env, hub, cache, "test-org/ckpt")
    line = last_error(p)
    assert "not a diffusers pipeline" in line and "test-org/ckpt/sd1-tiny.safetensors" in line
    p = pull(sdserve_bin, env, hub, cache, "test-org/ckpt/sd1-tiny.safetensors")
    assert p.returncode == 0, p.stderr
    path = pathlib.Path(p.stdout.decode().strip().splitlines()[-1])
    assert path == cache / "models--test-org--ckpt" / "snapshots" / ("f" * 40) / "sd1-tiny.safetensors"
    assert path.read_bytes() == (FIXTURES / "models" / "sd1-tiny.safetensors").read_bytes()


# -------------------------------------------------------------------------------------- URLs

def test_pull_url_with_sha256(sdserve_bin, env, hub, tmp_path):
    data = (FIXTURES / "models" / "sd1-tiny.safetensors").read_bytes()
    hub.plain["model.safetensors"] = data
    cache = tmp_path / "cache"
    url = hub.url + "/plain/model.safetensors?X-Amz-Signature=abc"
    bad = sdserve(sdserve_bin, env, "pull", url, "--sha256", "1" * 64, "--cache-dir", cache)
    line = last_error(bad)
    assert bad.returncode == 4 and "SHA-256 mismatch" in line and "abc" not in line
    assert not [f for f in cache.rglob("*") if f.is_file()]
    hub.drop_once = {"model.safetensors"}
    good = sdserve(sdserve_bin, env, "pull", url, "--sha256", hashlib.sha256(data).hexdigest(), "--cache-dir", cache)
    assert good.returncode == 0, good.stderr
    path = pathlib.Path(good.stdout.decode().strip().splitlines()[-1])
    assert path.name == "model.safetensors" and path.read_bytes() == data
    assert any("Range" in h for h in hub.seen("/plain/model.safetensors"))
    # It loads as a model.
    g = sdserve(sdserve_bin, env, "inspect", path)
    assert g.returncode == 0 and b"SD1.x" in g.stdout


# ------------------------------------------------------------------------------ demo, default

def start_server(sdserve_bin, env, *args):
    proc = subprocess.Popen([sdserve_bin, "serve", "--host", "127.0.0.1", "--port", "0", *map(str, args)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    log, port = [], [None]
    ready = threading.Event()

    def reader():
        for raw in proc.stderr:
            text = raw.decode("utf-8", "replace").rstrip("\n")
            log.append(text)
            try:
                rec = json.loads(text)
            except ValueError:
                continue
            if rec.get("msg") == "listening":
                port[0] = rec["port"]
                ready.set()
        ready.set()

    threading.Thread(target=reader, daemon=True).start()
    assert ready.wait(60) and port[0], "server did not start:\n" + "\n".join(log)
    return proc, port[0], log


def request(port, method, path, body=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    conn.request(method, path, body=json.dumps(body) if body is not None else None,
                 headers={"Content-Type": "application/json"} if body is not None else {})
    r = conn.getresponse()
    out = r.status, dict(r.getheaders()), r.read()
    conn.close()
    return out


def test_serve_demo_with_an_empty_cache(sdserve_bin, env, tmp_path):
    proc, port, log = start_server(sdserve_bin, env, "--model", "demo")
    try:
        deadline = time.time() + 60
        while request(port, "GET", "/health")[0] != 200:
            assert time.time() < deadline and proc.poll() is None, "\n".join(log)
            time.sleep(0.1)
        status, hdrs, raw = request(port, "POST", "/txt2img",
                                    {"prompt": "a red barn", "width": 64, "height": 64, "steps": 2})
        assert status == 200 and hdrs["Content-Type"] == "image/png", raw[:200]
        png = tmp_path / "demo.png"
        png.write_bytes(raw)
        assert decode_png(png)[:3] == (64, 64, 3)
        assert any("demo" in line and "noise" in line and '"warning"' in line for line in log), log
        assert (tmp_path / "home" / ".cache" / "sdserve" / "demo" / "model_index.json").exists()
    finally:
        proc.terminate()
        proc.wait(30)


def test_generate_demo_writes_a_png(sdserve_bin, env, tmp_path):
    out = tmp_path / "demo.png"
    g = sdserve(sdserve_bin, dict(env, SDSERVE_CACHE_DIR=str(tmp_path / "c")), "generate", "--model", "demo",
                "--prompt", "a lighthouse at dusk", "--steps", "2", "--width", "64", "--height", "64",
                "--output", out)
    assert g.returncode == 0, g.stderr
    w, h, ch, pixels, text = decode_png(out)
    assert (w, h, ch) == (64, 64, 3) and len(set(pixels)) > 1
    assert "noise" in g.stderr.decode()
    assert (tmp_path / "c" / "demo" / "sdserve_demo.json").exists()


def test_serve_default_model_offline_names_demo(sdserve_bin, env, tmp_path):
    e = dict(env, HF_ENDPOINT=f"http://127.0.0.1:{closed_port()}")
    p = subprocess.run([sdserve_bin, "serve", "--host", "127.0.0.1", "--port", "0"], env=e, capture_output=True,
                       timeout=60)
    assert p.returncode != 0
    lines = [line for line in p.stderr.decode().strip().splitlines() if line.startswith("sdserve: error: ")]
    assert len(lines) == 1, p.stderr
    assert "stable-diffusion-v1-5/stable-diffusion-v1-5" in lines[0] and "--model demo" in lines[0]
    # HF_HUB_OFFLINE: no network at all, the same advice.
    p = subprocess.run([sdserve_bin, "serve", "--port", "0"], env=dict(e, HF_HUB_OFFLINE="1"), capture_output=True,
                       timeout=60)
    assert p.returncode == 3 and b"--model demo" in p.stderr


def test_serve_default_model_pulls_on_first_start(sdserve_bin, env, hub, tmp_path):
    """SDSERVE_MODEL names a repo: the first start pulls it into the cache, then serves it."""
    e = dict(env, HF_ENDPOINT=hub.url, SDSERVE_MODEL="test-org/sd1-tiny")
    proc, port, log = start_server(sdserve_bin, e)
    try:
        deadline = time.time() + 60
        while request(port, "GET", "/health")[0] != 200:
            assert time.time() < deadline and proc.poll() is None, "\n".join(log)
            time.sleep(0.1)
        assert any('"downloaded"' in line for line in log), log
    finally:
        proc.terminate()
        proc.wait(30)
    assert (tmp_path / "home" / ".cache" / "sdserve" / "models--test-org--sd1-tiny" / "refs" / "main").exists()
