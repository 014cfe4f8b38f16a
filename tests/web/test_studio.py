"""The studio page against the shared demo server (assets embedded in the binary): txt2img with live
progress, previews and the gallery; cancel mid-job (button and Escape); values and gallery kept
across reloads; the LoRA browser and token counter; PNG Info from a dropped PNG; a validation error
naming its field; and the 375 px layout."""
import base64
import re

from .conftest import DESKTOP, MOBILE, expect

RECORD_PROGRESS_JS = """() => {
  window.__progress = [];
  window.__progressText = [];
  const bar = document.querySelector('#progress');
  const text = document.querySelector('#progress-text');
  new MutationObserver(() => window.__progress.push(bar.value)).observe(bar, { attributes: true, attributeFilter: ['value'] });
  new MutationObserver(() => window.__progressText.push(text.textContent)).observe(text, { childList: true, characterData: true, subtree: true });
  window.__announced = [];
  const live = document.querySelector('#progress-announce');
  new MutationObserver(() => window.__announced.push(live.textContent)).observe(live, { childList: true, characterData: true, subtree: true });
  window.__previews = [];
  const img = document.querySelector('#preview-image');
  new MutationObserver(() => window.__previews.push(img.getAttribute('src') || '')).observe(img, { attributes: true, attributeFilter: ['src'] });
}"""


def test_txt2img_progress_preview_gallery_and_viewer(open_studio):
    st = open_studio()
    page = st.page
    st.settings_loaded()
    # Defaults: 512x512, 20 steps, CFG 7, Euler a / Automatic, random seed.
    assert page.input_value("#width") == "512" and page.input_value("#height") == "512"
    assert page.input_value("#steps") == "20" and page.input_value("#cfg") == "7"
    assert page.input_value("#sampler") == "Euler a" and page.input_value("#scheduler") == "Automatic"
    assert page.input_value("#seed-mode") == "random"
    st.shot("desktop-txt2img-empty")

    page.fill("#prompt", "a lighthouse at dusk, (oil painting:1.2)")
    page.fill("#negative-prompt", "blurry")
    page.fill("#steps", "24")
    page.evaluate(RECORD_PROGRESS_JS)
    page.locator("#prompt").press("Control+Enter")  # the keyboard shortcut generates
    expect(page.locator("#cancel")).to_be_enabled()
    st.wait_gallery(1)
    st.wait_idle()

    # The bar advanced through intermediate values, the text counted steps with an ETA, previews came.
    values = [v for v in page.evaluate("window.__progress") if 0 < v < 100]
    assert len(set(values)) >= 5 and values == sorted(values), values
    texts = page.evaluate("window.__progressText")
    assert any(re.fullmatch(r"Step \d+/24 · ETA .+", t) for t in texts), texts
    expect(page.locator("#progress-text")).to_have_text(re.compile(r"Done: 1 image in .+"))
    # The screen reader's live region hears the start, the quarters and the end, not every step.
    announced = page.evaluate("window.__announced")
    assert page.get_attribute("#progress-announce", "role") == "status"
    assert page.get_attribute("#progress-text", "aria-live") is None
    steps_heard = [int(m.group(1)) for t in announced if (m := re.match(r"Step (\d+)/24", t))]
    assert steps_heard and len(steps_heard) <= 3 and all(n >= 6 for n in steps_heard), announced
    assert announced[-1].startswith("Done: 1 image"), announced
    assert len(announced) <= 8, announced
    previews = page.evaluate("window.__previews")
    assert sum(p.startswith("data:image/png;base64,") for p in previews) >= 2, previews  # live, low-res
    # then the result, large, opening the viewer
    assert page.get_attribute("#preview-image", "src").startswith("blob:")
    assert page.evaluate("document.querySelector('#preview-image').naturalWidth") == 512
    st.shot("desktop-txt2img-done")

    body = st.jobs[-1]
    assert body["prompt"] == "a lighthouse at dusk, (oil painting:1.2)" and body["negative_prompt"] == "blurry"
    assert (body["steps"], body["width"], body["height"], body["cfg_scale"]) == (24, 512, 512, 7)
    assert body["seed"] == -1 and body["sampler"] == "Euler a" and body["preview_every"] >= 1

    # The viewer: full size, parameters, download, reuse seed.
    status = st.server.json("GET", f"/v1/jobs/{st.job_ids[-1]}")[1]
    seed = status["seeds"][0]
    st.open_newest()
    expect(page.locator("#viewer-title")).to_contain_text("512×512")
    expect(page.locator("#viewer-info")).to_contain_text(f"Seed: {seed}")
    assert page.evaluate("document.querySelector('#viewer-image').naturalWidth") == 512
    href = page.get_attribute("#viewer-download", "href")
    assert href.startswith("blob:") and page.get_attribute("#viewer-download", "download").endswith(".png")
    with page.expect_download() as dl:
        page.click("#viewer-download")
    assert dl.value.suggested_filename.endswith(".png")
    page.click("#viewer-copy")
    expect(page.locator("#messages")).to_contain_text("Parameters copied")
    assert f"Seed: {seed}" in page.evaluate("navigator.clipboard.readText()")
    st.shot("desktop-viewer")
    page.click("#viewer-seed")
    expect(page.locator("#viewer")).to_be_hidden()
    assert page.input_value("#seed-mode") == "fixed" and page.input_value("#seed") == str(seed)

    # Values and the gallery (IndexedDB) survive a reload.
    page.select_option("#sampler", "DPM++ 2M")
    page.reload()
    st.settings_loaded()
    expect(page.locator("#gallery li")).to_have_count(1)
    assert page.input_value("#prompt") == "a lighthouse at dusk, (oil painting:1.2)"
    assert page.input_value("#steps") == "24" and page.input_value("#sampler") == "DPM++ 2M"
    assert page.input_value("#seed") == str(seed)
    assert page.evaluate("document.querySelector('#gallery img').naturalWidth") == 512


def test_cancel_a_long_job_with_the_button_and_with_escape(open_studio):
    st = open_studio()
    page = st.page
    st.settings_loaded()
    page.fill("#prompt", "a very long job")
    page.fill("#steps", "150")
    for how in ("button", "escape"):
        page.click("#generate")
        # wait until it is well under way
        page.wait_for_function("() => document.querySelector('#progress').value >= 3", timeout=60_000)
        if how == "button":
            page.click("#cancel")
        else:
            page.keyboard.press("Escape")
        expect(page.locator("#progress-text")).to_have_text(re.compile(r"Canceled at step \d+/150"))
        st.wait_idle()
        job = st.server.json("GET", f"/v1/jobs/{st.job_ids[-1]}")[1]
        assert job["status"] == "canceled" and 0 < job["step"] < 150, job
    assert st.gallery_count() == 0
    expect(page.locator("#generate")).to_be_enabled()


def test_lora_browser_weights_and_token_counter(open_studio):
    st = open_studio()
    page = st.page
    page.click("#lora-browser summary")
    chips = page.locator("#lora-list button")
    expect(chips).to_have_count(6)
    page.fill("#lora-search", "kohya")
    expect(chips).to_have_count(2)
    page.fill("#prompt", "a cat")
    page.locator("#lora-list button", has_text="a_kohya").click()
    expect(page.locator("#prompt")).to_have_value("a cat <lora:a_kohya:1>")
    # A weight slider for the tag, labelled with the LoRA's name; moving it rewrites the tag.
    slider = page.get_by_role("slider", name="LoRA a_kohya weight")
    expect(slider).to_have_value("1")
    slider.focus()
    for _ in range(10):
        page.keyboard.press("ArrowLeft")
    expect(page.locator("#prompt")).to_have_value("a cat <lora:a_kohya:0.5>")
    page.locator("#lora-list button", has_text="b_kohya").click()
    expect(page.get_by_role("slider", name="LoRA b_kohya weight")).to_be_visible()
    page.get_by_label("Remove LoRA a_kohya").click()
    expect(page.locator("#prompt")).to_have_value("a cat <lora:b_kohya:1>")
    # Removing a tag between commas leaves one comma; a leading tag takes its comma with it.
    page.fill("#prompt", "a, <lora:a_kohya:1>, b")
    page.get_by_label("Remove LoRA a_kohya").click()
    expect(page.locator("#prompt")).to_have_value("a, b")
    page.fill("#prompt", "<lora:a_kohya:1>, b")
    page.get_by_label("Remove LoRA a_kohya").click()
    expect(page.locator("#prompt")).to_have_value("b")
    page.fill("#prompt", "a cat <lora:b_kohya:1>")

    # The counter is the server's count, in 75-token chunks.
    expect(page.locator("#prompt-tokens")).to_have_text("2/75")
    long_prompt = ", ".join(["a red barn in a field"] * 16)
    page.fill("#prompt", long_prompt)
    want = st.server.json("POST", "/v1/tokenize", {"prompt": long_prompt})[1]
    assert want["chunks"] == 2, want
    expect(page.locator("#prompt-tokens")).to_have_text(f"{want['tokens']}/{want['limit']}")
    expect(page.locator("#prompt-tokens")).to_have_class(re.compile("multi"))
    page.fill("#negative-prompt", "blurry BREAK fog")
    expect(page.locator("#negative-tokens")).to_have_text("76/150")  # A1111: a closed chunk counts 75
    st.shot("desktop-lora")


def test_png_info_from_a_dropped_png_loads_the_form(open_studio, make_png, drop_file):
    raw = make_png(prompt="a castle on a hill", negative_prompt="fog, rain", seed=4242, steps=3, cfg_scale=5.5,
                   sampler="DPM++ 2M", scheduler="Karras", width=64, height=96, clip_skip=2)
    st = open_studio()
    page = st.page
    st.settings_loaded()
    st.tab("pnginfo")
    drop_file(page, "#pnginfo-drop", raw, "castle.png")
    expect(page.locator("#pnginfo-text")).to_contain_text("Seed: 4242")
    expect(page.locator("#pnginfo-text")).to_contain_text("a castle on a hill")
    st.shot("desktop-pnginfo")
    page.click("#pnginfo-to-txt2img")
    expect(page.locator("#tab-txt2img")).to_have_attribute("aria-selected", "true")
    assert page.input_value("#prompt") == "a castle on a hill"
    assert page.input_value("#negative-prompt") == "fog, rain"
    assert (page.input_value("#seed-mode"), page.input_value("#seed")) == ("fixed", "4242")
    assert page.input_value("#steps") == "3" and page.input_value("#cfg") == "5.5"
    assert page.input_value("#sampler") == "DPM++ 2M" and page.input_value("#scheduler") == "Karras"
    assert (page.input_value("#width"), page.input_value("#height")) == ("64", "96")
    assert page.input_value("#clip-skip") == "2"

    # Dropping a PNG on the prompt box does the same, as in A1111.
    raw2 = make_png(prompt="a quiet harbour", seed=77, steps=2)
    drop_file(page, "#prompt", raw2, "harbour.png")
    expect(page.locator("#prompt")).to_have_value("a quiet harbour")
    assert page.input_value("#seed") == "77" and page.input_value("#steps") == "2"


def test_a_validation_error_names_the_field(open_studio):
    st = open_studio()
    page = st.page
    st.allow(r"status of 400")
    st.settings_loaded()
    page.fill("#prompt", "x")
    page.fill("#steps", "500")
    page.click("#generate")
    msg = page.locator("#messages .message.error")
    expect(msg).to_contain_text("Steps")
    expect(msg).to_contain_text("between 1 and 150")
    expect(page.locator("#steps")).to_have_attribute("aria-invalid", "true")
    # Local checks need no round trip: an empty prompt, a missing image.
    page.fill("#steps", "20")
    page.fill("#prompt", "")
    page.click("#generate")
    expect(msg).to_contain_text("Write a prompt")
    st.tab("img2img")
    page.fill("#prompt", "x")
    page.click("#generate")
    expect(msg).to_contain_text("Add an input image")


def test_mobile_375(open_studio):
    st = open_studio(viewport=MOBILE)
    page = st.page
    st.settings_loaded()
    for mode in ("txt2img", "img2img", "inpaint", "upscale", "pnginfo"):
        st.tab(mode)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= MOBILE["width"], (mode, width)
        st.shot(f"mobile-{mode}")
    st.tab("txt2img")
    st.fill_job("a small boat", size=128, steps=4)
    page.click("#generate")
    st.wait_gallery(1)
    st.wait_idle()
    assert page.evaluate("document.documentElement.scrollWidth") <= MOBILE["width"]
    expect(page.locator("#generate")).to_be_in_viewport()
    st.shot("mobile-txt2img-done")
    st.open_newest()
    st.shot("mobile-viewer")
    box = page.locator("#viewer").bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= MOBILE["width"], box
    # the mask editor fits the width too, and paints
    page.click("#viewer-inpaint")
    canvas = page.locator("#mask-canvas")
    expect(canvas).to_be_visible()
    box = canvas.bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= MOBILE["width"], box
    page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.5)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.7, box["y"] + box["height"] * 0.5, steps=5)
    page.mouse.up()
    assert page.evaluate("document.documentElement.scrollWidth") <= MOBILE["width"]
    st.shot("mobile-inpaint-mask")


def test_page_basics_and_desktop_layout(open_studio):
    """Lighthouse-style basics (the labels and console are checked after every test), the tab
    widget's keyboard use, and the two-column desktop layout."""
    st = open_studio(viewport=DESKTOP)
    page = st.page
    assert page.title() == "sdserve studio"
    assert page.get_attribute("html", "lang") == "en"
    assert "width=device-width" in page.get_attribute('meta[name="viewport"]', "content")
    assert page.get_attribute('meta[name="description"]', "content")
    assert page.locator("h1").count() == 1
    # No inline script, style or handler in the served HTML: the CSP would block them (and any
    # violation would be a console error, which every test checks).
    html = st.server.request("GET", "/")[2].decode()
    assert not re.search(r"<script(?![^>]*\bsrc=)|<style|\sstyle=|\son[a-z]+=", html, re.I)
    form = page.locator("#form").bounding_box()
    out = page.locator("#actionbar").bounding_box()
    assert out["x"] > form["x"] + form["width"], (form, out)
    # Tabs: arrow keys move between them (roving tabindex).
    page.focus("#tab-txt2img")
    page.keyboard.press("ArrowRight")
    expect(page.locator("#tab-img2img")).to_be_focused()
    expect(page.locator("#tab-img2img")).to_have_attribute("aria-selected", "true")
    expect(page.locator("#workspace")).to_have_attribute("aria-labelledby", "tab-img2img")
    page.keyboard.press("End")
    expect(page.locator("#tab-pnginfo")).to_have_attribute("aria-selected", "true")
    expect(page.locator("#generate")).to_be_disabled()
    page.keyboard.press("Home")
    expect(page.locator("#tab-txt2img")).to_have_attribute("aria-selected", "true")
    # the mode is remembered too
    page.click("#tab-upscale")
    page.reload()
    expect(page.locator("#tab-upscale")).to_have_attribute("aria-selected", "true")


def test_hires_fix_batch_and_reuse_last_seed(open_studio):
    st = open_studio()
    page = st.page
    st.settings_loaded()
    st.fill_job("two small houses")
    page.fill("#batch-size", "2")
    page.click(".hires summary")
    page.check("#enable-hr")
    page.select_option("#hr-upscaler", "Latent")
    page.fill("#hr-scale", "2")
    page.click("#generate")
    st.wait_gallery(2)
    st.wait_idle()
    body = st.jobs[-1]
    assert body["enable_hr"] is True and body["hr_scale"] == 2 and body["hr_upscaler"] == "Latent"
    assert body["batch_size"] == 2 and body["denoising_strength"] == 0.7
    job = st.server.json("GET", f"/v1/jobs/{st.job_ids[-1]}")[1]
    first_seed = job["seeds"][0]
    assert job["seeds"] == [first_seed, first_seed + 1]
    st.open_newest()
    expect(page.locator("#viewer-title")).to_contain_text("128×128")  # the hires pass doubled it
    expect(page.locator("#viewer-info")).to_contain_text(f"Seed: {first_seed}")
    page.click("#viewer-close")

    # "Reuse last" sends the seed of the last job's first image.
    page.uncheck("#enable-hr")
    page.fill("#batch-size", "1")
    page.select_option("#seed-mode", "last")
    expect(page.locator("#seed")).to_have_value(str(first_seed))
    page.click("#generate")
    st.wait_gallery(3)
    st.wait_idle()
    assert st.jobs[-1]["seed"] == first_seed and "enable_hr" not in st.jobs[-1]


def test_size_presets_aspect_lock_and_seed_buttons(open_studio):
    st = open_studio()
    page = st.page
    page.select_option("#size-preset", "768x512")
    assert (page.input_value("#width"), page.input_value("#height")) == ("768", "512")
    page.click("#swap-size")
    assert (page.input_value("#width"), page.input_value("#height")) == ("512", "768")
    assert page.input_value("#size-preset") == "512x768"
    page.check("#aspect-lock")
    page.fill("#width", "256")
    expect(page.locator("#height")).to_have_value("384")
    assert page.input_value("#size-preset") == ""  # custom
    page.uncheck("#aspect-lock")
    page.fill("#width", "320")
    expect(page.locator("#height")).to_have_value("384")
    # Seed: typing one fixes it; Random goes back to -1.
    page.fill("#seed", "1234")
    expect(page.locator("#seed-mode")).to_have_value("fixed")
    page.click("#seed-random")
    expect(page.locator("#seed-mode")).to_have_value("random")
    expect(page.locator("#seed")).to_have_value("-1")
    page.click("#seed-reuse")  # nothing generated yet: says so
    expect(page.locator("#messages")).to_contain_text("No seed yet")


def test_model_loading_and_its_503_are_explained(open_studio):
    """The demo model loads too fast to catch, so /health and the job route answer as a loading
    server does for a while (the server's own words, see src/server/jobs.cc)."""
    st = open_studio(goto=False)
    page = st.page
    st.allow(r"status of 503")
    loading = {"on": True}
    body = '{"status":"unavailable","detail":"the model is loading"}'

    def health(route):
        if loading["on"]:
            route.fulfill(status=503, content_type="application/json", body=body)
        else:
            route.continue_()

    def jobs(route):
        if loading["on"] and route.request.method == "POST":
            route.fulfill(status=503, content_type="application/json", headers={"Retry-After": "10"},
                          body='{"error":"unavailable","detail":"the model is loading"}')
        else:
            route.continue_()

    page.route("**/health", health)
    page.route("**/v1/jobs", jobs)
    st.goto()
    expect(page.locator("#server-status")).to_have_text("Loading model…")
    expect(page.locator("#messages")).to_contain_text("The model is loading (503)")
    page.fill("#prompt", "too early")
    page.click("#generate")
    expect(page.locator("#messages .message.error")).to_contain_text("The model is loading (503): try again in a moment.")
    loading["on"] = False
    expect(page.locator("#server-status")).to_have_text("Ready")
    expect(page.locator("#messages")).not_to_contain_text("is loading (503). You can")


def test_paste_an_image_into_img2img(open_studio, make_png):
    raw = make_png(prompt="pasted", width=80, height=64)
    st = open_studio()
    page = st.page
    st.tab("img2img")
    page.evaluate("""([b64]) => {
      const bin = atob(b64);
      const bytes = new Uint8Array(bin.length);
      for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
      const dt = new DataTransfer();
      dt.items.add(new File([bytes], 'clip.png', { type: 'image/png' }));
      document.dispatchEvent(new ClipboardEvent('paste', { clipboardData: dt, bubbles: true }));
    }""", [base64.b64encode(raw).decode()])
    expect(page.locator("#img2img-input .input-info")).to_have_text("80×64")
    # Text pasted into the prompt stays text, even when the clipboard also carries an image.
    other = make_png(prompt="other", width=40, height=32)
    page.evaluate("""([b64]) => {
      const bin = atob(b64);
      const bytes = new Uint8Array(bin.length);
      for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
      const dt = new DataTransfer();
      dt.setData('text/plain', 'a pasted phrase');
      dt.items.add(new File([bytes], 'clip.png', { type: 'image/png' }));
      document.querySelector('#prompt').dispatchEvent(new ClipboardEvent('paste', { clipboardData: dt, bubbles: true }));
    }""", [base64.b64encode(other).decode()])
    expect(page.locator("#img2img-input .input-info")).to_have_text("80×64")


def test_lists_load_once_an_unreachable_server_is_back(open_studio):
    """The page was loaded, then the server became unreachable before its lists arrived: once /health
    answers again, the samplers, models and LoRAs are loaded without a reload."""
    st = open_studio(goto=False)
    page = st.page
    st.allow(r"ERR_FAILED|Failed to load resource")
    down = {"on": True}

    def maybe_fail(route):
        if down["on"]:
            route.abort()
        else:
            route.continue_()

    page.route(re.compile(r".*/(health|sdapi/v1/.*|v1/models)$"), maybe_fail)
    page.goto(st.origin + "/")
    expect(page.locator("#server-status")).to_have_text("Offline")
    expect(page.locator("#sampler option")).to_have_count(0)
    down["on"] = False
    expect(page.locator("#server-status")).to_have_text("Ready")
    st.settings_loaded()
    expect(page.locator("#model option")).not_to_have_count(0)
