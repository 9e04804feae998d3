"""The web page in headless Chromium (Debian's chromium + chromium-driver, driven by Selenium).

Upload a document, ask a question and see the answer with its source; hover the document and
see its summary; paste an email and click a suggested reply; hold a short agent conversation.
Screenshots go to ``artifacts/`` at the repository root.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from serve_util import live_server, make_state

from polytask.serve import create_app

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "artifacts"
TURING = REPO / "polytask" / "assets" / "samples" / "turing.md"
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


@pytest.fixture(scope="module")
def site(default_dir, tmp_path_factory):
    # The embedded default model: the page must show a real answer, not a random model's noise.
    state = make_state(default_dir, tmp_path_factory.mktemp("browser_home"), max_batch=4, max_len=2048)
    key, _ = state.keys.create(["docs"])
    with live_server(create_app(state)) as url:
        yield url, key
    state.scheduler.close()


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1400,1000"):
        opts.add_argument(flag)
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


def test_the_page_end_to_end(site, browser):
    from selenium.webdriver.common.action_chains import ActionChains

    url, key = site
    d = browser
    d.get(f"{url}/#key={key}")
    wait_for(d, lambda d: text_of(d, "#status") == "ready")
    assert "key=" not in d.current_url  # the key does not stay in the address bar

    # Upload a document; it appears in the list.
    d.find_element("css selector", "#file").send_keys(str(TURING))
    d.find_element("css selector", "#upload-btn").click()
    wait_for(d, lambda d: d.find_elements("css selector", "#doc-list li"))
    assert "turing.md" in text_of(d, "#doc-list li")
    assert "added" in text_of(d, "#status")

    # Ask: the answer and its source, quoted.
    d.find_element("css selector", "#question").send_keys("Where did Turing get his PhD?")
    d.find_element("css selector", "#ask-btn").click()
    wait_for(d, lambda d: text_of(d, "#answer") not in ("", "Thinking…"))
    assert "Princeton" in text_of(d, "#answer")
    source = text_of(d, "#sources li")
    assert "turing.md" in source and "Princeton" in source
    d.save_screenshot(str(ARTIFACTS / "browser_ask.png"))

    # Hover the document: its summary card.
    ActionChains(d).move_to_element(d.find_element("css selector", "#doc-list li")).perform()
    wait_for(d, lambda d: d.find_element("css selector", "#summary-card").is_displayed()
             and text_of(d, "#summary-card") not in ("", "Summarizing…"))
    summary = text_of(d, "#summary-card")
    assert "Turing" in summary and not summary.startswith("No summary")
    d.save_screenshot(str(ARTIFACTS / "browser_summary.png"))

    # Paste an email, get suggested replies, click one.
    d.find_element("css selector", "#email").send_keys(EMAIL)
    d.find_element("css selector", "#reply-btn").click()
    wait_for(d, lambda d: d.find_elements("css selector", "#replies button.reply"))
    replies = d.find_elements("css selector", "#replies button.reply")
    assert len(replies) >= 2
    chosen = replies[0].get_attribute("data-text")
    replies[0].click()
    wait_for(d, lambda d: text_of(d, "#copied").startswith("Copied"))
    assert chosen in text_of(d, "#copied")
    d.save_screenshot(str(ARTIFACTS / "browser_reply.png"))

    # A short conversation with the agent.
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
    d.save_screenshot(str(ARTIFACTS / "browser_agent.png"))
    assert "error" not in d.find_element("css selector", "#status").get_attribute("class")
