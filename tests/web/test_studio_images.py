"""Image-to-image work through the page: a txt2img result sent to img2img from the gallery, a mask
painted and partly erased for inpaint, the canvas extended for outpaint, and an upscale; each checked
in the request the page sent and in the image that came back."""
import base64
import io
import re

from PIL import Image

from .conftest import expect


def data_url_image(url):
    head, b64 = url.split(",", 1)
    assert head.startswith("data:image/png;base64"), head[:40]
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def set_range(page, selector, value):
    page.eval_on_selector(selector, "(el, v) => { el.value = v; el.dispatchEvent(new Event('input', { bubbles: true })); }",
                          str(value))


def paint(page, points):
    """A pointer stroke over the mask canvas through `points` given as fractions of its size."""
    box = page.locator("#mask-canvas").bounding_box()
    xy = [(box["x"] + fx * box["width"], box["y"] + fy * box["height"]) for fx, fy in points]
    page.mouse.move(*xy[0])
    page.mouse.down()
    for x, y in xy[1:]:
        page.mouse.move(x, y, steps=8)
    page.mouse.up()


def test_img2img_inpaint_outpaint_and_upscale_from_the_gallery(open_studio):
    st = open_studio()
    page = st.page
    st.settings_loaded()

    # 1. txt2img, small
    st.fill_job("a red barn", size=128, steps=4)
    page.click("#generate")
    st.wait_gallery(1)
    st.wait_idle()

    # 2. gallery → img2img
    st.open_newest()
    page.click("#viewer-img2img")
    expect(page.locator("#tab-img2img")).to_have_attribute("aria-selected", "true")
    expect(page.locator("#img2img-input .input-preview")).to_be_visible()
    expect(page.locator("#match-size-note")).to_have_text("Output 128×128, from the image.")
    set_range(page, "#strength", 0.5)
    expect(page.locator("#strength-value")).to_have_text("0.5")
    page.fill("#prompt", "a red barn in snow")
    page.click("#generate")
    st.wait_gallery(2)
    st.wait_idle()
    body = st.jobs[-1]
    assert body["init_image"].startswith("data:image/png;base64,")
    assert data_url_image(body["init_image"]).size == (128, 128)
    assert (body["width"], body["height"], body["denoising_strength"], body["resize_mode"]) == (128, 128, 0.5, 0)
    assert "mask" not in body and body["prompt"] == "a red barn in snow"
    job = st.server.json("GET", f"/v1/jobs/{st.job_ids[-1]}")[1]
    assert job["type"] == "img2img" and "Denoising strength: 0.5" in job["infotexts"][0], job
    expect(page.locator("#gallery li").first.locator(".badge")).to_have_text("img2img")
    st.shot("desktop-img2img")

    # 3. gallery → inpaint: without a mask it says so; paint a band, erase its middle
    st.open_newest()
    page.click("#viewer-inpaint")
    expect(page.locator("#tab-inpaint")).to_have_attribute("aria-selected", "true")
    expect(page.locator("#mask-editor")).to_be_visible()
    page.click("#generate")
    expect(page.locator("#messages .message.error")).to_contain_text("Paint a mask")
    set_range(page, "#brush-size", 16)
    expect(page.locator("#brush-size-value")).to_have_text("16")
    paint(page, [(0.15, 0.5), (0.5, 0.5), (0.85, 0.5)])
    page.click("label[for=tool-eraser]")
    expect(page.locator("#tool-eraser")).to_be_checked()
    set_range(page, "#brush-size", 24)
    paint(page, [(0.5, 0.5), (0.5, 0.5)])
    page.click("label[for=tool-brush]")
    paint(page, [(0.1, 0.1), (0.12, 0.12)])
    page.click("#mask-undo")  # that last dab is undone
    st.shot("desktop-inpaint-mask")
    page.click("#generate")
    st.wait_gallery(3)
    st.wait_idle()
    body = st.jobs[-1]
    mask = data_url_image(body["mask"]).convert("L")
    assert mask.size == (128, 128)
    assert mask.getpixel((38, 64)) == 255 and mask.getpixel((90, 64)) == 255   # painted
    assert mask.getpixel((64, 64)) == 0                                        # erased
    assert mask.getpixel((64, 20)) == 0 and mask.getpixel((14, 14)) == 0       # never painted / undone
    assert body["inpainting_fill"] == 1 and body["mask_blur"] == 4 and "outpaint" not in body
    job = st.server.json("GET", f"/v1/jobs/{st.job_ids[-1]}")[1]
    assert job["status"] == "succeeded" and "Denoising strength: 0.5" in job["infotexts"][0], job

    # 4. outpaint: extend the canvas 64 px to the right
    page.fill("#outpaint-right", "64")
    expect(page.locator("#mask-note")).to_contain_text("Outpainting to 192×128")
    expect(page.locator("#match-size-note")).to_have_text("Output 192×128, from the image.")
    st.shot("desktop-outpaint")
    page.click("#generate")
    st.wait_gallery(4)
    st.wait_idle()
    body = st.jobs[-1]
    assert body["outpaint"] == {"left": 0, "right": 64, "top": 0, "bottom": 0} and "mask" not in body
    assert (body["width"], body["height"]) == (192, 128)
    st.open_newest()
    expect(page.locator("#viewer-title")).to_contain_text("192×128")

    # 5. gallery → upscale (Lanczos ×2)
    page.click("#viewer-upscale")
    expect(page.locator("#tab-upscale")).to_have_attribute("aria-selected", "true")
    expect(page.locator("#generate")).to_have_text("Upscale")
    page.select_option("#upscaler", "Lanczos")
    page.fill("#upscale-factor", "2")
    expect(page.locator("#upscale-note")).to_have_text("192×128 → 384×256 with Lanczos")
    page.click("#generate")
    st.wait_gallery(5)
    st.wait_idle()
    body = st.jobs[-1]
    assert (body["type"], body["upscaler"], body["scale"]) == ("upscale", "Lanczos", 2)
    assert data_url_image(body["image"]).size == (192, 128)
    expect(page.locator("#progress-text")).to_have_text(re.compile("Done: 1 image"))
    st.open_newest()
    expect(page.locator("#viewer-title")).to_contain_text("384×256")
    st.shot("desktop-upscale")


def test_image_inputs_take_a_dropped_file_and_a_chosen_file(open_studio, make_png, drop_file, tmp_path):
    raw = make_png(prompt="an input", width=96, height=64)
    st = open_studio()
    page = st.page
    st.settings_loaded()
    st.tab("img2img")
    drop_file(page, "#img2img-input .dropzone", raw, "input.png")
    expect(page.locator("#img2img-input .input-info")).to_have_text("96×64")
    expect(page.locator("#match-size-note")).to_have_text("Output 96×64, from the image.")
    # the size fields give way to the image's size while "Output size from the image" is on
    expect(page.locator("#width")).to_be_disabled()
    page.uncheck("#match-size")
    expect(page.locator("#width")).to_be_enabled()
    page.get_by_label("Remove the input image").click()
    expect(page.locator("#img2img-input .input-preview")).to_be_hidden()
    path = tmp_path / "chosen.png"
    path.write_bytes(raw)
    st.tab("upscale")
    page.set_input_files("#upscale-file", str(path))
    expect(page.locator("#upscale-input .input-info")).to_have_text("96×64")
    # a file that is not an image is refused with a message
    page.set_input_files("#upscale-file", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"hello"}])
    expect(page.locator("#messages .message.error")).to_contain_text("PNG, JPEG or WebP")
