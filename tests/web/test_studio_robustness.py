"""Failure paths and races of the page: two Generate presses at once, an event stream that breaks
mid-job, a browser that refuses localStorage and IndexedDB or whose storage quota fills up, the
mask editor under two fingers and with Ctrl+Z after a mouse stroke, and a file dropped outside
every drop zone."""
import io
import re

from PIL import Image

from .conftest import expect


def png_bytes(w=128, h=128, color=(90, 120, 200)):
    buf = io.BytesIO()
    Image.new("RGB", (w, h), color).save(buf, "PNG")
    return buf.getvalue()


MASK_COVERAGE_JS = """() => {
  const c = document.querySelector('#mask-canvas');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let n = 0;
  for (let i = 3; i < d.length; i += 4) if (d[i] > 127) n++;
  return n;
}"""


def test_two_generate_presses_at_once_send_one_job(open_studio, drop_file):
    """img2img reads its image before submitting; a second press meanwhile must not start a second job."""
    st = open_studio()
    page = st.page
    st.allow(r"status of 429")
    st.settings_loaded()
    posts = []

    def jobs(route):
        posts.append(route.request.post_data)
        route.fulfill(status=429, content_type="application/json", headers={"Retry-After": "3"},
                      body='{"error":"queue_full","detail":"the queue is full"}')

    page.route("**/v1/jobs", jobs)
    st.tab("img2img")
    drop_file(page, "#img2img-input .dropzone", png_bytes(), "in.png")
    expect(page.locator("#img2img-input .input-info")).to_have_text("128×128")
    page.fill("#prompt", "twice")
    page.evaluate("() => { const b = document.querySelector('#generate'); b.click(); b.click(); }")
    expect(page.locator("#messages .message.error")).to_contain_text("The queue is full (429): retry in 3 s.")
    page.wait_for_timeout(500)
    assert len(posts) == 1, len(posts)
    # and the page is not stuck: the next press submits again
    expect(page.locator("#generate")).to_be_enabled()
    page.locator("#prompt").press("Control+Enter")
    expect(page.locator("#progress-text")).to_have_text("Queue full")
    page.wait_for_timeout(300)
    assert len(posts) == 2, len(posts)


BREAK_EVENTS_JS = """() => {
  // The event stream delivers its first chunk, then the connection drops (a proxy, Wi-Fi).
  const orig = window.fetch;
  window.fetch = async (input, init) => {
    const res = await orig(input, init);
    if (!String(input).endsWith('/events') || !res.ok) return res;
    const reader = res.body.getReader();
    let chunks = 0;
    const body = new ReadableStream({
      async pull(c) {
        if (chunks++ >= 1) { reader.cancel(); c.error(new TypeError('network error')); return; }
        const { value, done } = await reader.read();
        if (done) c.close(); else c.enqueue(value);
      },
    });
    return new Response(body, { status: res.status, headers: res.headers });
  };
}"""


def test_a_broken_event_stream_falls_back_to_polling(open_studio):
    st = open_studio(goto=False)
    page = st.page
    st.context.add_init_script(script=f"({BREAK_EVENTS_JS})()")
    st.goto()
    st.settings_loaded()
    st.fill_job("a broken stream")
    page.click("#generate")
    st.wait_gallery(1)
    st.wait_idle()
    expect(page.locator("#progress-text")).to_have_text(re.compile(r"Done: 1 image"))
    assert page.locator("#messages .message.error").count() == 0


REFUSE_STORAGE_JS = """() => {
  Storage.prototype.setItem = function () { throw new DOMException('The quota has been exceeded.', 'QuotaExceededError'); };
  IDBFactory.prototype.open = function () { throw new DOMException('IndexedDB is disabled', 'SecurityError'); };
}"""


def test_a_browser_that_refuses_storage_still_works_for_the_session(open_studio):
    """Private mode / a full quota: nothing is kept across reloads, but within the page the key, the
    last seed and the gallery still work (no error loop, no crash)."""
    st = open_studio(goto=False)
    page = st.page
    st.context.add_init_script(script=f"({REFUSE_STORAGE_JS})()")
    st.goto()
    st.settings_loaded()
    expect(page.locator("#messages")).to_contain_text("lasts for this session only")
    # The key is used although localStorage refused it.
    page.click("#key-button")
    page.fill("#api-key", "session-key-123")
    page.click("#key-save")
    expect(page.locator("#key-button")).to_have_text("API key ✓")
    st.fill_job("no storage")
    with page.expect_request(lambda r: r.url.endswith("/v1/jobs") and r.method == "POST") as req:
        page.click("#generate")
    assert req.value.headers.get("authorization") == "Bearer session-key-123"
    st.wait_gallery(1)
    st.wait_idle()
    seed = st.server.json("GET", f"/v1/jobs/{st.job_ids[-1]}")[1]["seeds"][0]
    # "Reuse last" reuses it.
    page.select_option("#seed-mode", "last")
    expect(page.locator("#seed")).to_have_value(str(seed))
    page.click("#generate")
    st.wait_gallery(2)
    st.wait_idle()
    assert st.jobs[-1]["seed"] == seed


# A browser whose gallery quota holds two images: a third put() fails as a full quota does.
QUOTA_OF_TWO_JS = """() => {
  const stored = new Set();
  const put = IDBObjectStore.prototype.put, del = IDBObjectStore.prototype.delete;
  IDBObjectStore.prototype.put = function (value, key) {
    const id = value && value.id;
    if (this.name === 'images' && !stored.has(id) && stored.size >= 2)
      throw new DOMException('The quota has been exceeded.', 'QuotaExceededError');
    stored.add(id);
    return put.call(this, value, key);
  };
  IDBObjectStore.prototype.delete = function (key) { stored.delete(key); return del.call(this, key); };
}"""


def test_a_full_storage_quota_evicts_the_oldest_images(open_studio):
    """The newest image is kept: the oldest stored one leaves the gallery (and the store) to make room,
    and the user is told so, once per batch."""
    st = open_studio(goto=False)
    page = st.page
    st.context.add_init_script(script=f"({QUOTA_OF_TWO_JS})()")
    st.goto()
    st.settings_loaded()
    for i in range(3):
        st.fill_job(f"quota {i}")
        page.click("#generate")
        st.wait_gallery(min(i + 1, 2))
        st.wait_idle()
    expect(page.locator("#messages")).to_contain_text("the oldest image was removed to keep the new one")
    assert page.locator("#messages .message.error").count() == 0
    labels = [page.locator("#gallery li button.thumb").nth(k).get_attribute("aria-label") for k in range(2)]
    assert "quota 2" in labels[0] and "quota 1" in labels[1], labels
    # The store holds the same two.
    page.reload()
    st.settings_loaded()
    st.wait_gallery(2)
    assert "quota 2" in page.locator("#gallery li button.thumb").first.get_attribute("aria-label")


def test_mask_brush_size_undo_key_and_two_fingers(open_studio, drop_file):
    st = open_studio()
    page = st.page
    st.tab("inpaint")
    drop_file(page, "#inpaint-input .dropzone", png_bytes(), "in.png")
    canvas = page.locator("#mask-canvas")
    expect(canvas).to_be_visible()
    # The brush size's number is the remembered size after a reload.
    page.eval_on_selector("#brush-size", "(el) => { el.value = 16; el.dispatchEvent(new Event('input', { bubbles: true })); }")
    page.reload()
    expect(page.locator("#brush-size")).to_have_value("16")
    expect(page.locator("#brush-size-value")).to_have_text("16")

    # Ctrl+Z right after a mouse stroke undoes the stroke (not the prompt's last edit).
    drop_file(page, "#inpaint-input .dropzone", png_bytes(), "in.png")
    expect(canvas).to_be_visible()
    page.fill("#prompt", "keep this")
    page.evaluate("document.querySelector('#mask-canvas').scrollIntoView({ block: 'center' })")  # clear of the sticky bar
    box = canvas.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.1, box["y"] + box["height"] * 0.3)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.4, box["y"] + box["height"] * 0.3, steps=5)
    page.mouse.up()
    assert page.evaluate(MASK_COVERAGE_JS) > 0
    page.keyboard.press("Control+z")
    assert page.evaluate(MASK_COVERAGE_JS) == 0
    expect(page.locator("#prompt")).to_have_value("keep this")

    # A second finger (a pinch) does not join the stroke: nothing is painted between the fingers.
    cdp = st.context.new_cdp_session(page)
    y = box["y"] + box["height"] * 0.5
    x1, x2 = box["x"] + box["width"] * 0.1, box["x"] + box["width"] * 0.9
    touch = lambda kind, pts: cdp.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": pts})  # noqa: E731
    touch("touchStart", [{"x": x1, "y": y, "id": 1}])
    touch("touchMove", [{"x": x1, "y": y + 10, "id": 1}])
    touch("touchStart", [{"x": x1, "y": y + 10, "id": 1}, {"x": x2, "y": y, "id": 2}])
    touch("touchMove", [{"x": x1, "y": y + 20, "id": 1}, {"x": x2, "y": y + 5, "id": 2}])
    touch("touchEnd", [])
    assert page.evaluate(MASK_COVERAGE_JS) > 0  # the first finger painted
    middle = page.evaluate("""() => { const c = document.querySelector('#mask-canvas');
      return c.getContext('2d').getImageData(c.width / 2, c.height / 2, 1, 1).data[3]; }""")
    assert middle == 0


DROP_ON_JS = """([selector, name, type]) => {
  const dt = new DataTransfer();
  dt.items.add(new File([new Uint8Array([1, 2, 3])], name, { type }));
  const target = document.querySelector(selector);
  const over = new DragEvent('dragover', { dataTransfer: dt, bubbles: true, cancelable: true });
  target.dispatchEvent(over);
  const drop = new DragEvent('drop', { dataTransfer: dt, bubbles: true, cancelable: true });
  target.dispatchEvent(drop);
  return [over.defaultPrevented, drop.defaultPrevented];
}"""


def test_a_file_dropped_outside_the_drop_zones_does_not_replace_the_page(open_studio):
    """Without preventDefault the browser opens a dropped file in place of the page."""
    st = open_studio()
    page = st.page
    assert page.evaluate(DROP_ON_JS, [".gallery-head", "photo.png", "image/png"]) == [True, True]
    assert page.evaluate(DROP_ON_JS, ["#prompt", "notes.txt", "text/plain"]) == [True, True]


def test_escape_closes_a_dialog_before_it_cancels_and_focus_comes_back(open_studio):
    st = open_studio()
    page = st.page
    st.settings_loaded()
    st.fill_job("two of them")
    page.fill("#batch-size", "2")
    page.click("#generate")
    st.wait_gallery(2)
    st.wait_idle()
    # Keyboard: open the second image and delete it; focus lands on the image that is left.
    page.locator("#gallery li").nth(1).locator("button.thumb").focus()
    page.keyboard.press("Enter")
    expect(page.locator("#viewer")).to_be_visible()
    expect(page.locator("#viewer-close")).to_be_focused()
    page.click("#viewer-delete")
    st.wait_gallery(1)
    expect(page.locator("#gallery li button.thumb")).to_be_focused()

    # While a job runs, Escape in a dialog closes the dialog (focus back on its button) and the job
    # goes on; the next Escape cancels it.
    page.fill("#batch-size", "1")
    page.fill("#width", "256")
    page.fill("#height", "256")
    page.fill("#steps", "150")
    page.click("#generate")
    page.wait_for_function("() => document.querySelector('#progress').value >= 1", timeout=60_000)
    page.click("#key-button")
    expect(page.locator("#key-dialog")).to_be_visible()
    page.keyboard.press("Escape")
    expect(page.locator("#key-dialog")).to_be_hidden()
    expect(page.locator("#key-button")).to_be_focused()
    assert st.server.json("GET", f"/v1/jobs/{st.job_ids[-1]}")[1]["status"] == "running"
    expect(page.locator("#cancel")).to_be_enabled()
    page.keyboard.press("Escape")
    expect(page.locator("#progress-text")).to_have_text(re.compile(r"Canceled at step \d+/150"))
    st.wait_idle()


STORE_FAILURES_JS = """async () => {
  const { galleryDb } = await import('/ui/js/store.js');
  await galleryDb.put({ id: 'no-image', created: 1 });            // a record without its Blob
  IDBObjectStore.prototype.put = IDBObjectStore.prototype.add;     // the next write fails (as on a full quota)
  let failed = '';
  try { await galleryDb.put({ id: 'no-image', created: 2 }); } catch (e) { failed = e.name; }
  await new Promise((r) => setTimeout(r, 200));                    // room for an unhandled rejection to surface
  return failed;
}"""


def test_gallery_store_failures_do_not_break_the_page(open_studio):
    st = open_studio()
    page = st.page
    assert page.evaluate(STORE_FAILURES_JS) == "ConstraintError"
    page.reload()
    st.settings_loaded()
    expect(page.locator("#gallery-empty")).to_be_visible()
    assert st.gallery_count() == 0
