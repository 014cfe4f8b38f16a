"""Browser tests of the web page (web/): Playwright (PyPI) drives Debian's `chromium` headless against
the real `sdserve serve --model demo` binary ($SDSERVE_BIN). Every page is watched: no request may
leave for another origin, no console error or uncaught exception may happen (unless a test expects
that HTTP error), and every form control must have an accessible label. Screenshots go to
build/test-artifacts/web/ (git-ignored)."""
import base64
import json
import os
import pathlib
import re
import shutil
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
sys.path.insert(0, str(ROOT / "tests"))  # tests/testlib
from testlib.server import SdserveServer  # noqa: E402
WEB = ROOT / "web"
ARTIFACTS = ROOT / "build" / "test-artifacts" / "web"
LORAS = FIXTURES / "lora" / "sd1-tiny"
UPSCALERS = FIXTURES / "upscalers"
DESKTOP = {"width": 1280, "height": 800}
MOBILE = {"width": 375, "height": 812}
TIMEOUT_MS = 60_000

try:
    from playwright.sync_api import expect, sync_playwright
    expect.set_options(timeout=30_000)  # generous: 2 slow cores, conditions not sleeps
except ImportError:  # reported by the `browser` fixture
    sync_playwright = None
    expect = None


def _chromium():
    return os.environ.get("SDSERVE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


# ----------------------------------------------------------------------------------------- server

class Server(SdserveServer):
    """`sdserve serve --model demo ...` (with --web-dir $SDSERVE_WEB_TEST_DIR when set); JSON bodies
    go out with their Content-Type, as the page sends them."""

    json_content_type = True
    request_timeout = 60

    def __init__(self, binary, *args, model="demo", wait_ready=True, env=None):
        dev = os.environ.get("SDSERVE_WEB_TEST_DIR")
        if dev and "--web-dir" not in args:
            args = (*args, "--web-dir", dev)
        super().__init__(binary, *args, model=model, wait_ready=wait_ready, env=env)

    def wait_job(self, job_id, until=("succeeded", "failed", "canceled"), headers=None, timeout=120):
        return super().wait_job(job_id, until, headers, timeout)


def _server_env(tmp):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SDSERVE_") or k == "SDSERVE_BIN"}
    env.update(SDSERVE_CACHE_DIR=str(tmp / "cache"), OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "2"))
    return env


@pytest.fixture(scope="session")
def sdserve_bin():
    path = os.environ.get("SDSERVE_BIN", str(ROOT / "build" / "release" / "sdserve"))
    if not os.path.exists(path):
        pytest.fail(f"sdserve binary not found at {path}; build it or set SDSERVE_BIN")
    return path


@pytest.fixture(scope="session")
def server_env(tmp_path_factory):
    return _server_env(tmp_path_factory.mktemp("sdserve-web"))


@pytest.fixture(scope="session")
def studio_server(sdserve_bin, server_env):
    """The shared server: the demo model, the test LoRAs and upscalers, the page as embedded in the
    binary (no --web-dir), so what ships is what is tested. SDSERVE_WEB_TEST_DIR=web runs these tests
    against the files on disk instead, while working on the page without rebuilding."""
    s = Server(sdserve_bin, "--lora-dir", LORAS, "--upscaler-dir", UPSCALERS, env=server_env)
    stale = [rel for rel, data in web_files().items()
             if s.request("GET", "/" if rel == "index.html" else f"/ui/{rel}")[2] != data]
    if stale:
        s.stop()
        pytest.fail(f"the page embedded in {sdserve_bin} differs from web/ ({', '.join(stale[:5])}): rebuild sdserve, "
                    "or set SDSERVE_WEB_TEST_DIR=web to test the files on disk")
    yield s
    s.stop()


def web_files():
    """{path relative to web/: bytes} of what the build embeds (dot files and back-ups skipped)."""
    return {p.relative_to(WEB).as_posix(): p.read_bytes() for p in sorted(WEB.rglob("*"))
            if p.is_file() and not p.name.startswith(".") and not p.name.endswith("~")}


@pytest.fixture
def start_server(sdserve_bin, server_env):
    """Starts a server of the test's own (other flags); stopped after the test."""
    started = []

    def start(*args, **kw):
        s = Server(sdserve_bin, *args, env=server_env, **kw)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


# ----------------------------------------------------------------------------------------- browser

@pytest.fixture(scope="session")
def browser():
    missing = []
    if sync_playwright is None:
        missing.append("the Python package playwright (pip install -r requirements-test.txt)")
    if not os.path.exists(_chromium()):
        missing.append("Debian's chromium (apt-get install chromium)")
    if missing:
        msg = "web tests need " + " and ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    with sync_playwright() as p:
        # Never `playwright install`: the system chromium, no download.
        b = p.chromium.launch(executable_path=_chromium(), headless=True,
                              args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"])
        yield b
        b.close()


A11Y_CHECK = """() => {
  const bad = [];
  const name = (el) => {
    if (el.getAttribute('aria-label')?.trim()) return true;
    const by = el.getAttribute('aria-labelledby');
    if (by && by.split(/\\s+/).every((id) => document.getElementById(id)?.textContent.trim())) return true;
    if (el.id && [...document.querySelectorAll('label')].some((l) => l.htmlFor === el.id && l.textContent.trim())) return true;
    if (el.closest('label')?.textContent.trim()) return true;
    return false;
  };
  for (const el of document.querySelectorAll('input, select, textarea, output, progress')) {
    if (el.type === 'hidden') continue;
    if (!name(el)) bad.push(el.outerHTML.slice(0, 120));
  }
  for (const el of document.querySelectorAll('button, a[href]')) {
    if (!(el.textContent.trim() || el.getAttribute('aria-label')?.trim() || el.getAttribute('title')?.trim()))
      bad.push(el.outerHTML.slice(0, 120));
  }
  for (const el of document.querySelectorAll('img')) {
    if (!el.hasAttribute('alt')) bad.push(el.outerHTML.slice(0, 120));
  }
  const ids = [...document.querySelectorAll('[id]')].map((e) => e.id);
  for (const id of new Set(ids)) if (ids.indexOf(id) !== ids.lastIndexOf(id)) bad.push(`duplicate id ${id}`);
  return bad;
}"""


class Studio:
    """A page on the studio with what the tests need to watch and drive it."""

    def __init__(self, context, page, server):
        self.context, self.page, self.server = context, page, server
        self.origin = server.url
        self.foreign = []          # requests to any other origin
        self.console_errors = []   # console.error and failed-resource messages
        self.page_errors = []      # uncaught exceptions
        self.allowed = []          # regexes of console errors a test expects (HTTP errors it provokes)
        self.jobs = []             # bodies POSTed to /v1/jobs
        self.job_ids = []
        page.on("console", lambda m: m.type == "error" and self.console_errors.append(m.text))
        page.on("pageerror", lambda e: self.page_errors.append(str(e)))
        page.on("request", self._on_request)
        page.on("response", self._on_response)

    def _on_request(self, req):
        url = req.url
        if not (url.startswith(self.origin + "/") or url.startswith(("data:", "blob:"))):
            self.foreign.append(url)
        if req.method == "POST" and url == self.origin + "/v1/jobs":
            try:
                self.jobs.append(json.loads(req.post_data or "{}"))
            except ValueError:
                self.jobs.append({})

    def _on_response(self, res):
        if res.request.method == "POST" and res.url == self.origin + "/v1/jobs" and res.status == 202:
            try:
                self.job_ids.append(res.json()["id"])
            except Exception:  # noqa: BLE001 - a body already consumed is fine
                pass

    def allow(self, pattern):
        self.allowed.append(re.compile(pattern))

    def goto(self):
        self.page.goto(self.origin + "/")
        expect(self.page.locator("#server-status")).to_have_text(re.compile("Ready|key|Loading|failed|Model", re.I))
        return self

    # --- driving
    def tab(self, mode):
        self.page.click(f"#tab-{mode}")
        expect(self.page.locator(f"#tab-{mode}")).to_have_attribute("aria-selected", "true")

    def fill(self, **values):
        for key, value in values.items():
            self.page.fill(f"#{key.replace('_', '-')}", str(value))

    def fill_job(self, prompt, size=64, steps=2):
        """A quick square txt2img job in the form (prompt, width = height = size, steps)."""
        self.fill(prompt=prompt, width=size, height=size, steps=steps)

    def settings_loaded(self):
        expect(self.page.locator("#sampler option")).not_to_have_count(0)

    def gallery_count(self):
        return self.page.locator("#gallery li").count()

    def wait_gallery(self, n):
        expect(self.page.locator("#gallery li")).to_have_count(n, timeout=TIMEOUT_MS)

    def wait_idle(self):
        expect(self.page.locator("#cancel")).to_be_disabled(timeout=TIMEOUT_MS)

    def open_newest(self):
        self.page.locator("#gallery li").first.locator("button.thumb").click()
        expect(self.page.locator("#viewer")).to_be_visible()

    def shot(self, name):
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.page.evaluate("() => window.scrollTo(0, 0)")  # sticky bars where they belong
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)

    def a11y_problems(self):
        return self.page.evaluate(A11Y_CHECK)

    def check(self):
        """What every test must leave true."""
        assert not self.foreign, f"requests left for other origins: {self.foreign}"
        assert not self.page_errors, f"uncaught errors in the page: {self.page_errors}"
        errors = [e for e in self.console_errors if not any(p.search(e) for p in self.allowed)]
        assert not errors, f"console errors: {errors}"
        assert not self.a11y_problems(), f"controls without an accessible name: {self.a11y_problems()}"


@pytest.fixture
def open_studio(browser, studio_server):
    """open_studio(server=None, viewport=DESKTOP, api_key=None) -> Studio, each in a fresh browser
    context (empty localStorage and IndexedDB); checked when the test ends."""
    opened = []

    def _open(server=None, viewport=DESKTOP, goto=True):
        server = server or studio_server
        context = browser.new_context(viewport=viewport, device_scale_factor=1,
                                      permissions=["clipboard-read", "clipboard-write"])
        context.set_default_timeout(TIMEOUT_MS)
        # The page must never need another host: anything else is recorded (Studio.foreign) and refused.
        context.route(re.compile(r"^(?!(?:" + re.escape(server.url) + r"/|data:|blob:)).*"),
                      lambda route: route.abort())
        page = context.new_page()
        s = Studio(context, page, server)
        opened.append(s)
        if goto:
            s.goto()
        return s

    yield _open
    try:
        for s in opened:
            s.check()
    finally:
        for s in opened:
            s.context.close()


def png_b64(raw):
    return base64.b64encode(raw).decode()


DROP_FILE_JS = """([b64, name, type]) => {
  const bin = atob(b64);
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  const dt = new DataTransfer();
  dt.items.add(new File([bytes], name, { type }));
  return dt;
}"""


@pytest.fixture
def drop_file():
    """drop_file(page, selector, raw_bytes): drops a file on `selector` as a user dragging it from
    the desktop would (dragenter, dragover, drop with a DataTransfer holding the file)."""
    def _drop(page, selector, raw, name="image.png", mime="image/png"):
        dt = page.evaluate_handle(DROP_FILE_JS, [png_b64(raw), name, mime])
        page.dispatch_event(selector, "dragenter", {"dataTransfer": dt})
        page.dispatch_event(selector, "dragover", {"dataTransfer": dt})
        page.dispatch_event(selector, "drop", {"dataTransfer": dt})
    return _drop


@pytest.fixture
def make_png(studio_server):
    """make_png(**job fields) -> PNG bytes of a finished txt2img job on the shared server."""
    def _make(**body):
        s = studio_server
        status, job = s.json("POST", "/v1/jobs", {"width": 64, "height": 64, "steps": 2, **body})
        assert status == 202, job
        done = s.wait_job(job["id"])
        assert done["status"] == "succeeded", done
        status, _, raw = s.request("GET", done["images"][0])
        assert status == 200
        return raw
    return _make
