"""deploy/aws/bootstrap.sh on this machine (--local-test: no apt, NVIDIA, systemd, CloudWatch agent
or CloudFormation signal) against local stand-ins: a release tarball from scripts/package.sh served
over HTTP, a fake Hugging Face hub with the tiny SD1 model, a fake instance-metadata service and a
recording `aws` CLI. Also the release tarball itself and the two instance agents (backlog publisher,
lifecycle/drain agent) against the sdserve the bootstrap started."""
import hashlib
import http.client
import json
import os
import pathlib
import signal
import subprocess
import tarfile
import time

import pytest

from deploy_helpers import AWS, release, sdserve_bin  # noqa: F401 (fixtures)
from fakes import (HUB_SHA, TINY, FileServer, Hub, Imds, clean_env, fake_aws, free_port, read_calls)

BOOTSTRAP = AWS / "bootstrap.sh"
KEY = "test-api-key-0123456789"


@pytest.fixture
def hub():
    h = Hub()
    yield h
    h.close()


@pytest.fixture
def release_server(release):
    folder, name, sha = release
    fs = FileServer(folder)
    yield fs, name, sha
    fs.close()


def bootstrap_env(tmp_path, hub, release_server, **over):
    fs, name, sha = release_server
    settings = dict(SDSERVE_BOOTSTRAP_ROOT=tmp_path / "root", SDSERVE_RELEASE_URL=f"{fs.url}/{name}",
                    SDSERVE_RELEASE_SHA256=sha, SDSERVE_MODEL_SOURCE="test-org/sd1-tiny", HF_ENDPOINT=hub.url,
                    SDSERVE_PORT=free_port(), SDSERVE_DEVICE="cpu", SDSERVE_WARMUP_SIZE=64, SDSERVE_API_KEY=KEY,
                    SDSERVE_WARMUP_TIMEOUT=120)
    settings.update(over)
    return clean_env(tmp_path, **{k: v for k, v in settings.items() if v is not None})


def run_bootstrap(env, *args):
    return subprocess.run([str(BOOTSTRAP), "--local-test", *args], env=env, capture_output=True, timeout=300)


def stop(pid_file, timeout=30):
    if not pid_file.exists():
        return
    pid = int(pid_file.read_text())
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)


def request(port, method, path, body=None, key=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
    r = conn.getresponse()
    out = r.status, r.read()
    conn.close()
    return out


def one_error_line(proc):
    """The failure contract: non-zero exit, exactly one stderr line, "bootstrap: error: ..."."""
    assert proc.returncode != 0, proc.stdout.decode()
    lines = proc.stderr.decode().strip().splitlines()
    assert len(lines) == 1, proc.stderr.decode()
    assert lines[0].startswith("bootstrap: error: "), lines[0]
    return lines[0]


@pytest.fixture
def served(tmp_path, hub, release_server):
    """A successful bootstrap: (root folder, port, the completed process); sdserve is stopped after."""
    env = bootstrap_env(tmp_path, hub, release_server)
    root = tmp_path / "root"
    p = run_bootstrap(env)
    try:
        yield root, int(env["SDSERVE_PORT"]), p, hub
    finally:
        stop(root / "run" / "sdserve.pid")


# ------------------------------------------------------------------------------ the tarball

def test_release_tarball_layout_and_relocation(release, tmp_path):
    folder, name, sha = release
    assert (folder / (name + ".sha256")).read_text() == f"{sha}  {name}\n"
    with tarfile.open(folder / name) as tar:
        names = tar.getnames()
        top = name.removesuffix(".tar.gz")
        assert all(n == top or n.startswith(top + "/") for n in names)
        assert all(m.uid == 0 and m.gid == 0 for m in tar.getmembers())
    subprocess.run(["tar", "-xzf", str(folder / name), "-C", str(tmp_path)], check=True)
    root = tmp_path / top
    for f in ("bin/sdserve", "share/sdserve/BUILDINFO", "share/sdserve/aws/bootstrap.sh", "share/sdserve/aws/sdserve.service",
              "share/sdserve/aws/sdserve-lifecycle.sh", "share/sdserve/aws/sdserve-backlog.sh", "NOTICES"):
        assert (root / f).exists(), f
    libs = {p.name for p in (root / "lib").iterdir()}
    assert "libdnnl.so.2" in libs and "libcpp-httplib.so.0.11" in libs
    assert not {"libc.so.6", "libm.so.6", "libstdc++.so.6", "libgcc_s.so.1", "libssl.so.3"} & libs
    info = dict(line.split("=", 1) for line in (root / "share/sdserve/BUILDINFO").read_text().splitlines())
    assert info["FLAVOUR"] == "cpu" and info["GLIBC_MIN"] and info["VERSION"] in name
    # It runs from anywhere and loads its bundled libraries, not the system's.
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    v = subprocess.run([root / "bin/sdserve", "--version"], capture_output=True, env=env)
    assert v.returncode == 0 and v.stdout.decode().startswith("sdserve ")
    if info["LAUNCHER"] == "runpath":  # patchelf set RUNPATH $ORIGIN/../lib
        ldd = subprocess.run(["ldd", root / "bin/sdserve"], capture_output=True, env=env).stdout.decode()
        expected = str(root / "bin/../lib/libdnnl.so.2")
    else:  # no patchelf at packaging: bin/sdserve is a wrapper that sets LD_LIBRARY_PATH
        assert info["LAUNCHER"] == "wrapper" and "LD_LIBRARY_PATH" in (root / "bin/sdserve").read_text()
        ldd = subprocess.run(["ldd", root / "libexec/sdserve"], capture_output=True,
                             env=dict(env, LD_LIBRARY_PATH=str(root / "lib"))).stdout.decode()
        expected = str(root / "lib/libdnnl.so.2")
    dnnl = next(line for line in ldd.splitlines() if "libdnnl.so" in line)
    assert expected in dnnl, dnnl
    assert "not found" not in ldd


# --------------------------------------------------------------------------- the bootstrap

def test_bootstrap_installs_pulls_verifies_and_serves(served):
    root, port, p, hub = served
    assert p.returncode == 0, p.stdout.decode() + p.stderr.decode()
    assert p.stderr == b""
    assert p.stdout.decode().strip().splitlines()[-1].endswith(
        f"sdserve is healthy at http://127.0.0.1:{port} (pid {(root / 'run/sdserve.pid').read_text().strip()})")
    # The service answers, with the key from the key file.
    assert request(port, "GET", "/health") == (200, b"Healthy")
    assert request(port, "GET", "/metrics")[0] == 401
    status, body = request(port, "GET", "/metrics", key=KEY)
    assert status == 200 and b"sdserve_queue_depth" in body
    # The release is installed where the systemd units expect it (under the test root).
    current = root / "opt/sdserve/current"
    assert current.is_symlink() and (current / "bin/sdserve").exists()
    # The model came through sdserve pull: pinned to the hub's commit, complete, byte-identical,
    # pickles never fetched, and the service runs offline from the cache.
    env = dict(line.split("=", 1) for line in (root / "etc/sdserve/sdserve.env").read_text().splitlines())
    snapshot = root / "var/lib/sdserve/cache/models--test-org--sd1-tiny/snapshots" / HUB_SHA
    assert env["SDSERVE_MODEL"] == str(snapshot) and env["HF_HUB_OFFLINE"] == "1"
    assert env["SDSERVE_DEVICE"] == "cpu" and env["SDSERVE_HOST"] == "127.0.0.1"
    assert env["SDSERVE_KEEP_ALIVE_TIMEOUT"] == "605"  # the ALB's default idle timeout (600) + 5
    assert (snapshot / ".sdserve-complete").exists()
    for f in TINY.rglob("*"):
        if f.is_file():
            assert (snapshot / f.relative_to(TINY)).read_bytes() == f.read_bytes(), f
    assert not [r for r in hub.requests if ".bin" in r]
    assert any(f"/resolve/{HUB_SHA}/" in r for r in hub.requests)
    # The key file is private; the key never reaches the log.
    keys = root / "etc/sdserve/api-keys"
    assert keys.read_text() == KEY + "\n" and (keys.stat().st_mode & 0o777) == 0o600
    log = (root / "var/log/sdserve/bootstrap.log").read_text()
    for step in ("[release]", "[model]", "[warm-up]", "[finish]"):
        assert step in log
    assert KEY not in log and KEY not in p.stdout.decode()
    # The warm-up generated an image through the authenticated API.
    assert '"path":"/txt2img"' in (root / "var/log/sdserve/sdserve.log").read_text()


def test_wrong_release_checksum_fails_clearly(tmp_path, hub, release_server):
    bad = "0" * 64
    p = run_bootstrap(bootstrap_env(tmp_path, hub, release_server, SDSERVE_RELEASE_SHA256=bad))
    line = one_error_line(p)
    assert "release checksum mismatch" in line and f"expected {bad}" in line and release_server[2] in line
    assert not (tmp_path / "root/opt/sdserve/current").exists()
    assert not (tmp_path / "root/run/sdserve.pid").exists()
    assert not hub.requests  # nothing past the failed step ran


def test_missing_or_malformed_checksum_is_refused(tmp_path, hub, release_server):
    for value in ("", "abc"):
        p = run_bootstrap(bootstrap_env(tmp_path, hub, release_server, SDSERVE_RELEASE_SHA256=value))
        line = one_error_line(p)
        assert "SDSERVE_RELEASE_SHA256" in line and "64 hex" in line
    assert not release_server[0].requests  # refused before any download


def test_unreachable_release_fails_clearly(tmp_path, hub, release_server):
    url = f"http://127.0.0.1:{free_port()}/sdserve.tar.gz?X-Amz-Signature=secret"
    line = one_error_line(run_bootstrap(bootstrap_env(tmp_path, hub, release_server, SDSERVE_RELEASE_URL=url)))
    assert "cannot download the release" in line and url.split("?")[0] in line and "secret" not in line


def test_unreachable_hub_fails_clearly(tmp_path, hub, release_server):
    port = free_port()
    p = run_bootstrap(bootstrap_env(tmp_path, hub, release_server, HF_ENDPOINT=f"http://127.0.0.1:{port}"))
    line = one_error_line(p)
    assert line.startswith("bootstrap: error: model pull failed: sdserve: error: ")
    assert f"127.0.0.1:{port}" in line
    assert not (tmp_path / "root/run/sdserve.pid").exists()
    assert "model pull failed" in (tmp_path / "root/var/log/sdserve/bootstrap.log").read_text()


def test_missing_model_fails_clearly(tmp_path, hub, release_server):
    line = one_error_line(run_bootstrap(bootstrap_env(tmp_path, hub, release_server,
                                                      SDSERVE_MODEL_SOURCE="test-org/no-such-model")))
    assert "model pull failed" in line and "test-org/no-such-model" in line


def test_settings_file_is_data_not_code(tmp_path, hub, release_server):
    """deploy.env is parsed as KEY=VALUE, never sourced: shell in a value does not run."""
    marker = tmp_path / "pwned"
    env_file = tmp_path / "deploy.env"
    env_file.write_text(f"SDSERVE_MODEL_SOURCE=$(touch {marker})\nPATH=/nonexistent\nNOT_OURS=1\n")
    env = bootstrap_env(tmp_path, hub, release_server, SDSERVE_MODEL_SOURCE=None)
    p = run_bootstrap(env, "--env", str(env_file))
    line = one_error_line(p)
    assert f"$(touch {marker})" in line  # taken literally, refused as a model name
    assert not marker.exists()


def test_local_test_needs_a_root_and_a_root_needs_local_test(tmp_path):
    p = subprocess.run([str(BOOTSTRAP), "--local-test"], env=clean_env(tmp_path), capture_output=True)
    assert p.returncode == 2 and b"SDSERVE_BOOTSTRAP_ROOT" in p.stderr
    p = subprocess.run([str(BOOTSTRAP)], env=clean_env(tmp_path, SDSERVE_BOOTSTRAP_ROOT=tmp_path), capture_output=True)
    assert p.returncode == 2 and b"only for --local-test" in p.stderr


# ------------------------------------------------------------------------------- the agents

def agent_env(tmp_path, root, port, imds, **extra):
    bin_dir = tmp_path / "fakebin"
    calls = fake_aws(bin_dir)
    env = clean_env(tmp_path, PATH=f"{bin_dir}:{os.environ['PATH']}", SDSERVE_PORT=port, SDSERVE_IMDS_URL=imds.url,
                    SDSERVE_API_KEY_FILE=root / "etc/sdserve/api-keys", SDSERVE_AGENT_ONCE=1,
                    SDSERVE_AGENT_STATE=tmp_path / "agent-state", SDSERVE_LAUNCH_HOOK="sdserve-launch",
                    SDSERVE_DRAIN_HOOK="sdserve-drain", **extra)
    return env, calls


def run_agent(name, env):
    p = subprocess.run([str(AWS / "instance" / name)], env=env, capture_output=True, timeout=300)
    assert p.returncode == 0, p.stdout.decode() + p.stderr.decode()
    return [json.loads(line) for line in p.stdout.decode().splitlines()]


def test_backlog_publisher_sends_queue_plus_running(served, tmp_path):
    root, port, p, _ = served
    assert p.returncode == 0, p.stderr.decode()
    imds = Imds()
    try:
        env, calls = agent_env(tmp_path, root, port, imds)
        run_agent("sdserve-backlog.sh", env)
        # Not in service (a warm-pool instance warming up): nothing is published.
        imds.values["meta-data/autoscaling/target-lifecycle-state"] = "Warmed:Pending:Wait"
        run_agent("sdserve-backlog.sh", env)
        imds.values["meta-data/autoscaling/target-lifecycle-state"] = "InService"
        jobs = [request(port, "POST", "/v1/jobs", {"prompt": f"busy {i}", "steps": 150, "width": 64, "height": 64},
                        key=KEY) for i in range(3)]
        assert all(status == 202 for status, _ in jobs), jobs
        lines = run_agent("sdserve-backlog.sh", env)
        for _, body in jobs:
            request(port, "POST", f"/v1/jobs/{json.loads(body)['id']}/cancel", {}, key=KEY)
    finally:
        imds.close()
    sent = [c for c in read_calls(calls) if c[:2] == ["cloudwatch", "put-metric-data"]]
    assert len(sent) == 2
    for call in sent:
        args = dict(zip(call[2::2], call[3::2]))
        assert args["--namespace"] == "sdserve" and args["--metric-name"] == "Backlog" and args["--unit"] == "Count"
        assert args["--dimensions"] == "AutoScalingGroupName=sd-test-asg"  # from the instance's tags (IMDSv2)
    assert dict(zip(sent[0][2::2], sent[0][3::2]))["--value"] == "0"
    assert int(dict(zip(sent[1][2::2], sent[1][3::2]))["--value"]) >= 2  # one running, the rest queued
    assert imds.tokenless == 0 and any("Backlog=" in line["msg"] for line in lines)


@pytest.mark.parametrize("trigger", ["scale-in", "spot", "warm-pool"])
def test_lifecycle_agent_completes_launch_then_drains_before_termination(served, tmp_path, trigger):
    root, port, p, _ = served
    assert p.returncode == 0, p.stderr.decode()
    pid = int((root / "run/sdserve.pid").read_text())
    imds = Imds()
    try:
        stop_cmd = f"kill -TERM {pid}; while kill -0 {pid} 2>/dev/null; do sleep 0.1; done"
        env, calls = agent_env(tmp_path, root, port, imds, SDSERVE_STOP_CMD=stop_cmd)
        # In service and healthy: the launch hook is completed, once.
        run_agent("sdserve-lifecycle.sh", env)
        run_agent("sdserve-lifecycle.sh", env)
        launch = [c for c in read_calls(calls) if "sdserve-launch" in c]
        assert launch == [["autoscaling", "complete-lifecycle-action", "--lifecycle-hook-name", "sdserve-launch",
                           "--auto-scaling-group-name", "sd-test-asg", "--instance-id", "i-0123456789abcdef0",
                           "--lifecycle-action-result", "CONTINUE"]]
        # A job is running when the instance is told to go.
        status, body = request(port, "POST", "/v1/jobs", {"prompt": "last one", "steps": 30, "width": 64,
                                                          "height": 64}, key=KEY)
        assert status == 202
        if trigger == "scale-in":
            imds.values["meta-data/autoscaling/target-lifecycle-state"] = "Terminated"
        elif trigger == "warm-pool":  # scale-in with ReuseOnScaleIn: back to the (stopped) warm pool
            imds.values["meta-data/autoscaling/target-lifecycle-state"] = "Warmed:Stopped"
        else:
            imds.values["meta-data/spot/instance-action"] = '{"action": "terminate", "time": "2026-01-01T00:02:00Z"}'
        lines = run_agent("sdserve-lifecycle.sh", env)
        run_agent("sdserve-lifecycle.sh", env)  # drained once: nothing more happens
    finally:
        imds.close()
    log = (root / "var/log/sdserve/sdserve.log").read_text()
    assert '"signal received: draining"' in log and '"drained; exiting"' in log
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    drain = [c for c in read_calls(calls) if "sdserve-drain" in c]
    assert drain == [["autoscaling", "complete-lifecycle-action", "--lifecycle-hook-name", "sdserve-drain",
                      "--auto-scaling-group-name", "sd-test-asg", "--instance-id", "i-0123456789abcdef0",
                      "--lifecycle-action-result", "CONTINUE"]]
    msgs = [line["msg"] for line in lines]
    assert msgs[1].startswith("draining: ") and any(m.startswith("sdserve stopped after") for m in msgs)
    assert imds.tokenless == 0


def test_release_checksum_is_what_deploy_sh_and_the_template_carry(release):
    """The .sha256 file next to the tarball is the value for ReleaseSha256 (docs/DEPLOY.md)."""
    folder, name, sha = release
    assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == sha
    assert len(sha) == 64 and pathlib.Path(folder / (name + ".sha256")).read_text().split()[0] == sha
