"""The page against servers in particular states: a full queue (the queue position while waiting,
then 429 with its retry time), API keys (the key dialog, a wrong key, then the right one sent as a
header), a model that failed to load (503), the assets the binary embeds being exactly web/, and
--web-dir serving edited files."""
import os
import re
import shutil

from .conftest import FIXTURES, WEB, expect, web_files

KEY = "studio-key-12345"


def long_job(server, headers=None):
    status, job = server.json("POST", "/v1/jobs", {"prompt": "occupy the worker", "steps": 150}, headers=headers)
    assert status == 202, job
    return job["id"]


def test_queue_position_then_queue_full(open_studio, start_server):
    s = start_server("--queue-size", "1")
    running = long_job(s)
    s.wait_job(running, until=("running",))
    st = open_studio(server=s)
    page = st.page
    st.allow(r"status of 429")
    st.settings_loaded()
    st.fill_job("wait for it")

    # Our job waits behind the running one: the page says where it is in the queue.
    page.click("#generate")
    expect(page.locator("#progress-text")).to_have_text("Queued: 1 job ahead")
    assert page.evaluate("document.querySelector('#progress').hasAttribute('value')") is False  # indeterminate
    st.shot("desktop-queued")
    page.click("#cancel")  # a queued job ends at once
    expect(page.locator("#progress-text")).to_have_text(re.compile(r"Canceled at step 0/\d+"))
    st.wait_idle()

    # Someone else fills the queue: Generate is answered 429 and the page says when to retry.
    waiting = long_job(s)
    page.click("#generate")
    msg = page.locator("#messages .message.error")
    expect(msg).to_contain_text(re.compile(r"The queue is full \(429\): retry in \d+ s\."))
    expect(page.locator("#progress-text")).to_have_text("Queue full")
    expect(page.locator("#generate")).to_be_enabled()
    st.shot("desktop-queue-full")
    for j in (waiting, running):
        s.request("POST", f"/v1/jobs/{j}/cancel")


def test_api_key_dialog_wrong_key_then_right_key(open_studio, start_server):
    s = start_server("--api-key", KEY)
    st = open_studio(server=s)
    page = st.page
    st.allow(r"status of 401")
    # The page itself is public; its first API call is refused, so it asks for the key.
    dialog = page.locator("#key-dialog")
    expect(dialog).to_be_visible()
    expect(page.locator("#key-reason")).to_contain_text("requires an API key")
    st.shot("desktop-api-key")
    page.fill("#api-key", "wrong-key-000")
    page.click("#key-save")
    expect(page.locator("#messages")).to_contain_text("The API key was refused (401)")
    expect(dialog).to_be_visible()
    expect(page.locator("#key-reason")).to_contain_text("refused")
    st.shot("desktop-api-key-wrong")
    # A key no header can carry (a pasted non-ASCII character) is refused in the dialog itself.
    page.fill("#api-key", "clé-\u00e9t\u00e9-1234")
    page.click("#key-save")
    expect(page.locator("#key-reason")).to_contain_text("printable ASCII")
    expect(dialog).to_be_visible()
    page.fill("#api-key", KEY)
    page.click("#key-save")
    expect(dialog).to_be_hidden()
    st.settings_loaded()
    expect(page.locator("#key-button")).to_have_text("API key ✓")
    st.fill_job("with a key")
    with page.expect_request(lambda r: r.url.endswith("/v1/jobs") and r.method == "POST") as req:
        page.click("#generate")
    assert req.value.headers.get("authorization") == f"Bearer {KEY}"
    st.wait_gallery(1)

    # The key is remembered: a reload goes straight to work.
    page.reload()
    st.settings_loaded()
    expect(dialog).to_be_hidden()
    expect(page.locator("#gallery li")).to_have_count(1)


def test_model_that_failed_to_load_is_explained(open_studio, start_server, tmp_path):
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}garbage")
    s = start_server(model=broken, wait_ready=False)
    st = open_studio(server=s, goto=False)
    page = st.page
    st.allow(r"status of 503")
    page.goto(s.url + "/")
    expect(page.locator("#server-status")).to_have_text("Model failed")
    expect(page.locator("#messages")).to_contain_text("failed to load")
    page.fill("#prompt", "anything")
    page.click("#generate")
    expect(page.locator("#messages .message.error").last).to_contain_text("(503)")
    st.shot("desktop-model-failed")


def test_model_picker_switches_models(open_studio, start_server, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    os.symlink(FIXTURES / "models" / "sd1-tiny", models / "sd1-tiny")
    os.symlink(FIXTURES / "models" / "sd2-tiny", models / "sd2-tiny")
    s = start_server("--models-dir", models, model="sd1-tiny")
    st = open_studio(server=s)
    page = st.page
    picker = page.locator("#model")
    expect(picker.locator("option")).to_have_count(2)
    expect(picker).to_have_value("sd1-tiny")
    picker.select_option("sd2-tiny")
    expect(page.locator("#messages")).to_contain_text("Model sd2-tiny loaded.")
    assert s.json("GET", "/v1/models")[1]["current"] == "sd2-tiny"
    # jobs name the picked model
    st.fill_job("on the other model")
    page.click("#generate")
    st.wait_gallery(1)
    assert st.jobs[-1]["model"] == "sd2-tiny"
    expect(page.locator("#gallery li").first).to_be_visible()
    st.open_newest()
    expect(page.locator("#viewer-info")).to_contain_text("Model: sd2-tiny")


def test_embedded_assets_are_web_dir(studio_server):
    """What the binary serves is byte for byte web/ (rebuild after editing web/), with the CSP."""
    status, hdrs, body = studio_server.request("GET", "/")
    assert status == 200 and body == (WEB / "index.html").read_bytes(), "rebuild sdserve: its embedded page is stale"
    csp = hdrs["Content-Security-Policy"]
    for directive in ("default-src 'self'", "connect-src 'self'", "script-src 'self'", "style-src 'self'"):
        assert directive in csp, csp
    files = web_files()
    assert len(files) >= 10
    for rel, data in files.items():
        status, hdrs, body = studio_server.request("GET", f"/ui/{rel}")
        assert status == 200, rel
        assert body == data, f"/ui/{rel} differs from web/{rel}: rebuild sdserve"
        assert "Content-Security-Policy" in hdrs
    total = sum(map(len, files.values()))
    assert total < 150_000, f"web/ is {total} bytes"


def test_web_dir_serves_edited_files(open_studio, start_server, tmp_path):
    dev = tmp_path / "web"
    shutil.copytree(WEB, dev)
    s = start_server("--web-dir", dev)
    st = open_studio(server=s)
    page = st.page
    expect(page).to_have_title("sdserve studio")
    html = (dev / "index.html").read_text()
    (dev / "index.html").write_text(html.replace("<title>sdserve studio</title>", "<title>studio (dev)</title>"))
    css = (dev / "style.css").read_text()
    (dev / "style.css").write_text(css + "\n.brand span { color: rgb(1, 2, 3); }\n")
    page.reload()
    expect(page).to_have_title("studio (dev)")
    expect(page.locator(".brand span")).to_have_css("color", "rgb(1, 2, 3)")
    st.settings_loaded()
