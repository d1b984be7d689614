"""The studio's pages as an artist meets them, in headless Chromium (Debian's ``chromium`` and
``chromium-driver``, as test_viewer drives them): a screenshot of each page at a laptop's
width (1366×768) and a phone's (390×844), saved under the test's tmp folder to be looked at,
with what can be measured checked (no sideways scrolling, the result shown large); the
new-job form's fields follow the mode; a bad value's message appears beside its control,
on screen, after a click on "queue". Without the pages: the small fixes (sizes in MiB/GiB,
the queue's first line, a job's title, the viewer's labels, stages in words)."""
from __future__ import annotations

import json
import re
import time

import pytest
import yaml

from gigadream.studio.pages import queue_summary
from gigadream.studio.server import limit, size, stage_words
from test_studio import IDENTITY, Server, images  # noqa: F401 (a fixture)
from test_resume import assert_no_orphans
from test_viewer import browser, console_errors, wait_loaded  # noqa: F401 (a fixture)

LAPTOP, PHONE = (1366, 768), (390, 844)
# the pictures shown in the window (lazy ones further down load as they come into view)
ON_SCREEN_DRAWN = """return [...document.images]
    .filter(i => i.getClientRects().length && i.getBoundingClientRect().top < innerHeight)
    .every(i => i.complete && i.naturalWidth > 0)
  && getComputedStyle(document.body).margin === '0px'"""


@pytest.fixture(scope="module")
def studio(tmp_path_factory, images):  # noqa: F811
    """A studio with two images, a finished sweep of two identity jobs (a group) and a
    stopped job (its bar and buttons)."""
    s = Server(tmp_path_factory.mktemp("pages") / "studio", images)
    ups = [s.ok("/api/images/pick", {"path": str(images / n)}) for n in ("pano.jpg", "small.jpg")]
    made = s.ok("/api/jobs", {"image": ups[0]["id"], "config": "impressionist",
                              "overrides": IDENTITY, "sweep": {"export.quality": [40, 90]}})
    s.wait(made["jobs"])
    stopped = s.ok("/api/jobs", {"image": ups[1]["id"], "config": "impressionist",
                                 "overrides": IDENTITY})["jobs"][0]
    s.ok(f"/api/jobs/{stopped}/stop")
    s.wait([stopped], ("stopped",))
    made["stopped"] = stopped
    yield s, ups, made
    s.stop()
    assert_no_orphans(s.mark)


def window(browser, wh) -> None:  # noqa: F811
    """The page's viewport at ``wh`` CSS px, a phone's (under 600 px) as a mobile browser
    lays it out (DevTools' device emulation: the window's frame does not count)."""
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": wh[0], "height": wh[1], "deviceScaleFactor": 1, "mobile": wh[0] < 600})


def sideways(browser) -> int:  # noqa: F811
    """How many px the page scrolls sideways (0: it fits the window's width)."""
    return browser.execute_script(
        "return document.documentElement.scrollWidth - document.documentElement.clientWidth")


def test_each_page_at_a_laptops_and_a_phones_width(studio, browser, tmp_path):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    s, ups, made = studio
    job = made["jobs"][0]
    browser.get(s.url)                  # the token, kept as a cookie
    pages = {"queue": "/", "images": "/images", "new-dream": f"/new?image={ups[0]['id']}",
             "new-style": f"/new?preset=impressionist-style&image={ups[0]['id']}",
             "job": f"/jobs/{job}", "stopped": f"/jobs/{made['stopped']}", "group": f"/groups/{made['group']}",
             "viewer": f"/jobs/{job}/view/result.html"}
    shots = tmp_path / "screens"
    shots.mkdir()
    console_errors(browser)
    for wh in (LAPTOP, PHONE):
        window(browser, wh)
        for name, path in pages.items():
            browser.get(s.base + path)
            if name == "viewer":
                wait_loaded(browser, 60)
            else:               # every picture on screen drawn, the style sheet applied
                WebDriverWait(browser, 30).until(lambda b: b.execute_script(ON_SCREEN_DRAWN))
            browser.save_screenshot(str(shots / f"{name}-{wh[0]}.png"))
            assert sideways(browser) == 0, (name, wh)
            text = browser.execute_script("return document.body.innerText")
            assert not re.search(r"·\s*·", text), (name, text)            # no doubled separator
            if name == "job":
                # the result fills the page's width (a 223 px thumbnail did not)
                img = browser.find_element(By.ID, "result")
                width = browser.execute_script("return document.querySelector('main').clientWidth")
                assert img.size["width"] >= 0.8 * (width - 40), (img.size, width)
            if name == "viewer":
                labels = [browser.find_element(By.ID, i).text
                          for i in ("label-before", "label-after")]
                assert labels == ["input", "result"]
    assert console_errors(browser) == []
    assert len(list(shots.glob("*.png"))) == 2 * len(pages)
    print(f"screenshots: {shots}")


def test_the_new_job_form_shows_the_fields_of_its_mode(studio, browser):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait
    s, ups, _ = studio
    browser.get(s.url)
    window(browser, LAPTOP)

    def shown(key):
        return browser.find_element(By.ID, f"set-{key}").is_displayed()

    browser.get(s.base + f"/new?image={ups[0]['id']}")
    # the few settings first, on the first screen; the rest folded under "advanced"
    assert shown("dream.step_size") and shown("dream.layers") and shown("keep_far.factor")
    assert not shown("engine.scheduler") and not shown("export.iiif_id")
    assert not shown("style.style_weight") and not browser.find_element(
        By.ID, "style-picker").is_displayed()
    Select(browser.find_element(By.ID, "set-mode")).select_by_value("style")
    assert shown("style.style_weight") and not shown("dream.step_size")
    browser.execute_script("document.getElementById('advanced').open = true")
    assert shown("engine.scheduler") and shown("sequence.temporal_weight")
    assert not shown("sequence.blend")                                  # dream's alone

    browser.get(s.base + f"/new?preset=impressionist-style&image={ups[0]['id']}")
    assert shown("style.style_weight") and not shown("dream.step_size")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#style-picker img")) == 2
    WebDriverWait(browser, 20).until(lambda b: b.execute_script(          # thumbnails
        "return [...document.querySelectorAll('#style-picker img')]"
        ".every(i => i.naturalWidth > 0)"))
    small = str(s.images / "small.jpg")
    browser.find_element(By.CSS_SELECTOR, f".style-image[value='{small}']").click()
    spec = browser.execute_script("return spec('run')")
    assert f"style.images={json.dumps([small])}" in spec["overrides"]
    # no setting of the other mode travels with the job (the CLI refuses them)
    browser.find_element(By.ID, "set-dream.step_size")
    browser.execute_script("document.getElementById('set-dream.step_size').value = '3'")
    assert not any(o.startswith("dream.") for o in browser.execute_script(
        "return spec('run')")["overrides"])


@pytest.mark.parametrize("wh", [LAPTOP, PHONE], ids=["laptop", "phone"])
@pytest.mark.parametrize("key, bad", [("dream.step_size", "abc"), ("tiling.tile", "7")])
def test_a_bad_values_message_is_beside_its_control_and_on_screen(studio, browser, wh, key,
                                                                   bad, tmp_path):  # noqa: F811
    """A click on "queue" with a bad value (one shown first, one under "advanced") puts the
    CLI's one-line message beside the field, inside the window, with nothing queued."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    s, ups, _ = studio
    browser.get(s.url)
    window(browser, wh)
    browser.get(s.base + f"/new?image={ups[0]['id']}")
    before = len(s.get("/api/jobs").json()["jobs"])
    browser.execute_script("""const [key, bad] = arguments;
        const el = document.getElementById('set-' + key);
        if (el.closest('details')) el.closest('details').open = true;
        el.value = bad;""", key, bad)
    browser.execute_script("window.scrollTo(0, 0)")        # the queue button stays on screen
    browser.find_element(By.ID, "queue").click()
    WebDriverWait(browser, 20).until(lambda b: b.find_elements(By.CSS_SELECTOR, ".field-error"))
    time.sleep(0.3)                                         # any scrolling done
    note = browser.find_element(By.CSS_SELECTOR, ".field-error")
    assert note.text.startswith(f"{key}: expected") and "\n" not in note.text
    field = note.find_element(By.XPATH, "..")
    assert field.get_attribute("data-field") == key                     # beside its control
    box = browser.execute_script("""const r = arguments[0].getBoundingClientRect();
        return [r.top, r.bottom, r.left, r.right, innerHeight, innerWidth];""", note)
    top, bottom, left, right, height, width = box
    browser.save_screenshot(str(tmp_path / f"error-{key}-{wh[0]}.png"))
    assert 0 <= top and bottom <= height and 0 <= left and right <= width, box
    assert len(s.get("/api/jobs").json()["jobs"]) == before


def test_the_abstract_to_literal_slider_sets_dream_literal_of_a_queued_job(studio, browser):  # noqa: F811
    """The slider, off at first (the preset's own layers travel), on: moved by the keyboard
    to 0.75, its value shown; queued, the job's config (job.yaml, written as it starts)
    carries dream.literal and the layers it picks (auto). Its "sweep it" sweeps dream.literal
    from 0 to 1, the slider off, which the server's own check (``jobs.expand``, without
    queueing five dreams) turns into five configs, each with its layers."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait
    from gigadream.modes.dream import dream_layers
    from gigadream.studio.jobs import check_config, expand
    s, ups, _ = studio
    browser.get(s.url)
    window(browser, LAPTOP)
    browser.get(s.base + f"/new?image={ups[1]['id']}")          # impressionist: its own layers
    slider = browser.find_element(By.ID, "set-dream.literal")
    value = browser.find_element(By.ID, "literal-value")
    assert slider.is_displayed() and not slider.is_enabled() and value.text == "off"
    assert not [o for o in browser.execute_script("return spec('run')")["overrides"]
                if o.startswith(("dream.literal", "dream.layers"))]

    browser.find_element(By.ID, "literal-on").click()
    slider.send_keys(Keys.END, *[Keys.ARROW_LEFT] * 5)            # 1, then 5 steps of 0.05
    assert value.text == "0.75"
    assert not browser.find_element(By.ID, "set-dream.layers").is_enabled()
    # the smallest dream that runs (one octave, one pass of one 64 px tile of a 96 px photo)
    browser.execute_script("""document.getElementById('advanced').open = true;
        for (const [k, v] of Object.entries(arguments[0]))
            document.getElementById('set-' + k).value = v;""",
        {"dream.octaves": "1", "dream.passes": "1", "dream.calibration_tiles": "1",
         "keep_far.factor": "0", "tiling.tile": "64", "engine.workers": "1",
         "engine.threads": "1"})
    browser.find_element(By.ID, "queue").click()
    WebDriverWait(browser, 20).until(lambda b: re.search(r"/jobs/\d+$", b.current_url))
    job = int(browser.current_url.rsplit("/", 1)[1])
    assert {"dream.literal=0.75", "dream.layers=auto"} <= set(s.job(job)["overrides"])
    # job.yaml, the config its run reads, is written as the job starts; no need to let the
    # dream finish (13 s on two cores): stopped as soon as it is there
    end = time.time() + 60
    while (r := s.get(f"/jobs/{job}/files/job.yaml")).status_code != 200:
        assert time.time() < end, s.job(job)
        time.sleep(0.1)
    s.ok(f"/api/jobs/{job}/stop")
    s.wait([job], ("stopped", "done"))
    cfg = yaml.safe_load(r.text)
    assert cfg["dream"]["literal"] == 0.75 and cfg["dream"]["layers"] == "auto"

    browser.get(s.base + f"/new?image={ups[1]['id']}")
    browser.find_element(By.ID, "literal-sweep").click()          # the slider left off
    spec = browser.execute_script("return spec('run')")
    assert spec["sweep"] == {"dream.literal": "[0, 0.25, 0.5, 0.75, 1]"}
    spec["input"] = str(s.images / "small.jpg")            # the server's, for its image id
    del spec["image"]
    _, key, jobs = expand(spec, lambda p: p)
    layers = [dream_layers(check_config(j["preset"], j["overrides"])) for j in jobs]
    assert key == "dream.literal" and layers == [
        (("relu2_2", 1.0),), (("relu3_3", 0.75), ("relu4_1", 0.25)),
        (("relu4_1", 0.5), ("relu4_3", 0.5)), (("relu4_3", 0.25), ("relu5_1", 0.75)),
        (("relu5_3", 1.0),)]


# --- the small fixes, without a browser --------------------------------------------------

def test_sizes_read_as_the_user_set_them():
    assert limit(8192 * 2**20) == "8192 MiB (8 GiB)"                  # not "8589.9 MB"
    assert limit(500 * 2**20) == "500 MiB"
    assert size(3 * 2**30) == "3 GiB" and size(int(1.5 * 2**20)) == "1.5 MiB"


def test_the_queues_first_line_has_no_doubled_separator():
    assert " · ".join(queue_summary(["cpu0"], {})) == "slots: cpu0 · no jobs yet"
    assert " · ".join(queue_summary(["gpu0", "gpu1"], {"done": 2, "queued": 0})) == \
        "slots: gpu0, gpu1 · 2 done"


def test_stages_in_words():
    assert stage_words("pass octave 1 pass 2: 1714×571 px, 12 tiles", "dream") == \
        "dreaming at 1714×571 px (pass 2)"
    assert stage_words("export 40 %", "style") == "writing (40 %)"
    assert stage_words("frame 3/8 pass octave 0 pass 1: 96×64 px, 1 tiles", "style") == \
        "frame 3 of 8: painting at 96×64 px (pass 1)"
    assert stage_words("stopped (resumable)", "dream") == "stopped (resumable)"


def test_the_pages_say_sizes_titles_and_stages_as_a_person_reads_them(studio):
    s, ups, made = studio
    images = s.get("/images").text
    assert "8192 MiB (8 GiB)" in images and "8589.9" not in images
    queue = s.get("/").text
    assert "·  ·" not in queue and "· ·" not in queue
    job = s.get(f"/jobs/{made['jobs'][0]}").text
    assert "run of" not in job and "pano.jpg, pano.jpg" not in job
    assert '<h1 id="title">pano.jpg · impressionist</h1>' in job
    assert 'href="/static/studio.css"' in job
    css = s.get("/static/studio.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
