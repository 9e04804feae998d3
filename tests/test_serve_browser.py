"""The web page in headless Chromium (Debian's chromium + chromium-driver, driven by Selenium).

At 1366 px: the agent's greeting as the page opens; upload two documents, ask a question and see
the answer with its source; hover the documents back and forth while their summaries are being
made and see each card end on its own summary; paste an email, see why a reply is suggested and
click one; hold a short agent conversation; the cards fill their rows; the favicon is served.
At 390 px: no horizontal scroll and no clipped button; then a wrong key clears the screen.
Screenshots go to ``artifacts/`` at the repository root (the test prints their paths).
"""

from __future__ import annotations

import base64
import shutil
from pathlib import Path

import pytest
from serve_util import live_server, make_state

from polytask.serve import create_app

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "artifacts"
SAMPLES = REPO / "polytask" / "assets" / "samples"
TURING = SAMPLES / "turing.md"
NOTE = SAMPLES / "thank_you.txt"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="needs Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver)")
webdriver = pytest.importorskip("selenium.webdriver")

EMAIL = """From: Dana Whitfield <dana@example.org>
To: you@example.com
Subject: Project review meeting on Thursday

Hi,

Could we meet on Thursday at 10am to review the project plan? Please let me know if that time works for you.

Thanks,
Dana
"""

# The page's geometry, measured in the page: horizontal overflow, and every button whose box leaves
# the viewport or its card, or whose label does not fit in it.
LAYOUT_JS = """
const inside = (r, box) => r.left >= box.left - 0.5 && r.right <= box.right + 0.5;
const view = {left: 0, right: document.documentElement.clientWidth};  // the width beside a scroll bar
const clipped = [...document.querySelectorAll("button")].filter((b) => b.offsetParent).filter((b) => {
  const r = b.getBoundingClientRect();
  const card = b.closest("section, header").getBoundingClientRect();
  return !inside(r, view) || !inside(r, card) || b.scrollWidth > b.clientWidth + 1;
}).map((b) => b.id || b.className || b.textContent);
const rows = {};  // top -> the [left, right] of each card in that row
for (const s of document.querySelectorAll("main > section")) {
  const r = s.getBoundingClientRect();
  (rows[Math.round(r.top)] ||= []).push([r.left, r.right]);
}
const main = getComputedStyle(document.querySelector("main"));
const span = (cards) => Math.max(...cards.map((c) => c[1])) - Math.min(...cards.map((c) => c[0]));
return {innerWidth: window.innerWidth, clientWidth: view.right, scrollWidth: document.documentElement.scrollWidth,
        clipped, rowWidths: Object.values(rows).map(span),
        contentWidth: parseFloat(main.width) - parseFloat(main.paddingLeft) - parseFloat(main.paddingRight)};
"""


@pytest.fixture(scope="module")
def site(default_dir, tmp_path_factory):
    # The embedded default model: the page must show a real answer, not a random model's noise.
    state = make_state(default_dir, tmp_path_factory.mktemp("browser_home"), max_batch=4, max_len=2048)
    key, _ = state.keys.create(["docs"])
    with live_server(create_app(state)) as url:
        yield url, key
    state.close()


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1366,900"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # failed loads (a 404) show in the console log
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    ARTIFACTS.mkdir(exist_ok=True)
    yield driver
    driver.quit()


def wait_for(driver, condition, timeout: float = 120):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(condition)


def text_of(driver, selector: str) -> str:
    return driver.find_element("css selector", selector).text


def squeeze(text: str) -> str:  # as the page shows it: runs of white space as one space
    return " ".join(text.split())


def viewport(driver, width: int, height: int) -> None:
    driver.set_window_size(width, height)
    wait_for(driver, lambda d: d.execute_script("return window.innerWidth") == width, timeout=10)


def doc_item(driver, name: str):
    return next(li for li in driver.find_elements("css selector", "#doc-list li") if li.text.startswith(name))


def summary_requests(driver) -> list[str]:
    return driver.execute_script(
        "return performance.getEntriesByType('resource').map((e) => e.name).filter((n) => n.endsWith('/summary'))")


def screenshot(driver, name: str) -> None:
    """The whole page at the window's width, not only the window's part of it (drawn without the
    vertical scroll bar, as on a phone, so the width is the window's, not the one left beside the bar)."""
    width, height = driver.execute_script("return [window.innerWidth, document.documentElement.scrollHeight]")
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}})
    path = ARTIFACTS / name
    path.write_bytes(base64.b64decode(shot["data"]))
    print(f"screenshot: {path}")


def test_the_page_end_to_end(site, browser):
    from selenium.webdriver.common.action_chains import ActionChains

    url, key = site
    d = browser
    viewport(d, 1366, 900)
    d.get(f"{url}/#key={key}")
    wait_for(d, lambda d: text_of(d, "#status") == "ready")
    assert "key=" not in d.current_url  # the key does not stay in the address bar

    # The agent greets as soon as the page opens, before anyone has written.
    wait_for(d, lambda d: d.find_elements("css selector", "#agent-log .msg.greeting"))
    assert "How can I help" in text_of(d, "#agent-log .msg.greeting")
    assert len(d.find_elements("css selector", "#agent-log .msg")) == 1

    # The favicon the page names is served.
    icon = d.execute_async_script("""const done = arguments[0];
        const href = document.querySelector("link[rel=icon]").href;
        fetch(href).then((r) => done([href, r.status, r.headers.get("content-type")]));""")
    assert icon[1] == 200 and icon[2].startswith("image/svg+xml"), icon

    # Upload two documents; they appear in the list by the names they were uploaded under.
    for path in (TURING, NOTE):
        before = len(d.find_elements("css selector", "#doc-list li"))
        d.find_element("css selector", "#file").send_keys(str(path))
        d.find_element("css selector", "#upload-btn").click()
        wait_for(d, lambda d, n=before: len(d.find_elements("css selector", "#doc-list li")) > n)
        assert "added" in text_of(d, "#status")
    names = sorted(li.text for li in d.find_elements("css selector", "#doc-list li"))
    assert names[0].startswith("thank_you.txt") and names[1].startswith("turing.md") and "upload" not in names[0], names

    # Ask: the answer and its source, quoted.
    d.find_element("css selector", "#question").send_keys("Where did Turing get his PhD?")
    d.find_element("css selector", "#ask-btn").click()
    wait_for(d, lambda d: text_of(d, "#answer") not in ("", "Thinking…"))
    assert "Princeton" in text_of(d, "#answer")
    source = text_of(d, "#sources li")
    assert "turing.md" in source and "Princeton" in source
    assert "confidence" in text_of(d, "#answer .confidence")
    # A question the documents do not answer is declined plainly: no source list under it.
    d.find_element("css selector", "#question").clear()
    d.find_element("css selector", "#question").send_keys("What was Turing's favourite food?")
    d.find_element("css selector", "#ask-btn").click()
    wait_for(d, lambda d: "do not contain" in text_of(d, "#answer"))
    assert d.find_elements("css selector", "#sources li") == [] and "not in the documents" in text_of(d, "#status")

    # Hover back and forth while both summaries are being made: the answers arrive for documents
    # no longer (or again) under the pointer, and the card must still end on the hovered one's.
    turing, note = doc_item(d, "turing.md"), doc_item(d, "thank_you.txt")
    ActionChains(d).move_to_element(turing).pause(0.1).move_to_element(note).pause(0.1) \
        .move_to_element(turing).perform()
    card = "#summary-card"
    wait_for(d, lambda d: d.find_element("css selector", card).is_displayed()
             and text_of(d, card) not in ("", "Summarizing…"))
    summary = text_of(d, card)
    assert "Turing" in summary and not summary.startswith("No summary")
    assert summary == squeeze(turing.get_attribute("title"))
    wait_for(d, lambda d: note.get_attribute("title"))  # the other summary has arrived too
    ActionChains(d).move_to_element(note).perform()
    assert text_of(d, card) == squeeze(note.get_attribute("title"))  # from the page's cache, at once
    assert len(summary_requests(d)) == 2  # one per document, however often it was hovered

    # Paste an email: why a reply is suggested, then the replies; click one.
    d.find_element("css selector", "#email").send_keys(EMAIL)
    d.find_element("css selector", "#reply-btn").click()
    wait_for(d, lambda d: d.find_elements("css selector", "#replies button.reply"))
    verdict = text_of(d, "#reply-verdict")
    assert verdict.startswith("Reply needed: asks: ") and verdict[20:] in " ".join(EMAIL.split()), verdict
    replies = d.find_elements("css selector", "#replies button.reply")
    assert len(replies) >= 2
    chosen = replies[0].get_attribute("data-text")
    replies[0].click()
    wait_for(d, lambda d: text_of(d, "#copied").startswith("Copied"))
    assert chosen in text_of(d, "#copied")

    # A short conversation with the agent, after its greeting.
    replies = "#agent-log .msg.agent:not(.greeting)"
    for message in ("Hi, I forgot my password and cannot log in.", "Thanks. Can I talk to a person please?"):
        before = len(d.find_elements("css selector", replies))
        d.find_element("css selector", "#agent-input").send_keys(message)
        d.find_element("css selector", "#agent-send").click()
        wait_for(d, lambda d, n=before: len(d.find_elements("css selector", replies)) > n)
    answers = d.find_elements("css selector", replies)
    assert len(answers) == 2 and all(a.text.strip() for a in answers)
    assert "account.md" in answers[0].text and "reset password" in answers[0].text  # cited article, intent
    assert "handed over to a person" in answers[-1].text
    assert "greeting" in d.find_element("css selector", "#agent-log .msg").get_attribute("class")
    assert "error" not in d.find_element("css selector", "#status").get_attribute("class")

    # 1366 px: every row of cards is full (no card alone beside empty columns), nothing clipped.
    layout = d.execute_script(LAYOUT_JS)
    assert layout["scrollWidth"] <= layout["clientWidth"] and not layout["clipped"], layout
    rows = layout["rowWidths"]
    assert len(rows) > 1 and all(abs(w - layout["contentWidth"]) < 2 for w in rows), layout
    ActionChains(d).move_to_element(doc_item(d, "turing.md")).perform()
    screenshot(d, "browser_1366.png")

    # 390 px (a phone): no horizontal scroll, every button whole, the hover card on screen.
    viewport(d, 390, 844)
    layout = d.execute_script(LAYOUT_JS)
    assert layout["scrollWidth"] <= layout["innerWidth"], layout
    assert layout["scrollWidth"] <= layout["clientWidth"], layout  # nothing under the vertical scroll bar either
    assert not layout["clipped"], layout
    ActionChains(d).move_to_element(doc_item(d, "turing.md")).perform()
    rect = d.execute_script(f"return document.querySelector('{card}').getBoundingClientRect().toJSON()")
    assert text_of(d, card) == summary and 0 <= rect["left"] and rect["right"] <= layout["clientWidth"], rect
    screenshot(d, "browser_390.png")
    failed = [e["message"] for e in d.get_log("browser") if " 404 " in e["message"] or "favicon" in e["message"]]
    assert not failed, failed

    # A wrong key: the documents, answers, summaries, replies and conversation of the last one go.
    d.execute_script("window.scrollTo(0, 0)")
    d.find_element("css selector", "#key").clear()
    d.find_element("css selector", "#key").send_keys("pt-wrong")
    d.find_element("css selector", "#key-btn").click()
    wait_for(d, lambda d: "error" in d.find_element("css selector", "#status").get_attribute("class"))
    for selector in ("#doc-list li", "#sources li", "#replies button", "#agent-log .msg", "#collection option"):
        assert not d.find_elements("css selector", selector), selector
    for selector in ("#answer", "#reply-verdict", "#copied"):
        assert text_of(d, selector) == "", selector
    assert not d.find_element("css selector", card).is_displayed()
