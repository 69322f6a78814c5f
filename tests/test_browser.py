"""JupyterLab in a real browser (Debian's headless Chromium, driven by Playwright):
what a student sees when they open a notebook and press Run All.

Screenshots are kept in results/screenshots/ for a human to look at.
"""
from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "results" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
QUIET = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason="Debian's chromium is installed by `make test`")


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=QUIET)
        yield chromium
        chromium.close()


def run_all(browser, lab: str, notebook: str):
    """Open `notebook`, wait for an idle kernel, Run All, wait until it is done."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    workspace = notebook.removesuffix(".ipynb")      # its own, empty: no other tabs
    page.goto(f"{lab}/lab/workspaces/{workspace}/tree/{notebook}?reset&token=test")
    idle = ".jp-Notebook-ExecutionIndicator[data-status='idle']"
    page.wait_for_selector(idle, state="attached", timeout=90_000)
    # The indicator can say idle before the kernel's connection is ready, and then
    # Run All is dropped: every prompt stays [ ]. Press it again until a cell starts.
    for _ in range(5):
        page.get_by_role("menuitem", name="Run", exact=True).click()
        page.get_by_text("Run All Cells", exact=True).click()
        if some_cell_started(page, within=10):
            break
    else:
        page.screenshot(path=SHOTS / f"{notebook}-never-started.png", full_page=True)
        raise AssertionError(f"Run All never started {notebook}: see the screenshot")
    deadline = time.monotonic() + 200
    while not every_cell_ran(page):             # each prompt shows [n], none [*] or [ ]
        if time.monotonic() > deadline:
            page.screenshot(path=SHOTS / f"{notebook}-unfinished.png", full_page=True)
            raise AssertionError(f"{notebook} did not finish: see the screenshot")
        time.sleep(0.5)
    page.wait_for_selector(idle, state="attached", timeout=30_000)
    return page


def prompts(page) -> list[str]:
    panel = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)")
    return [p.strip() for p in panel.locator(".jp-CodeCell .jp-InputPrompt").all_text_contents()]


def some_cell_started(page, within: float) -> bool:
    """True once a prompt shows [*] (running) or [n] (done) within `within` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if any(re.fullmatch(r"\[(\*|\d+)\]:", p) for p in prompts(page)):
            return True
        time.sleep(0.25)
    return False


def every_cell_ran(page) -> bool:
    shown = prompts(page)
    return bool(shown) and all(re.fullmatch(r"\[\d+\]:", p) for p in shown)


def test_the_welcome_notebook_runs_in_a_browser(browser, jupyterlab):
    lab = jupyterlab
    page = run_all(browser, lab, "00_welcome.ipynb")
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SHOTS / "00_welcome.png", full_page=True)
    text = page.locator(".jp-Notebook").inner_text()
    assert "ready." in text and "container," in text and "VM (" in text
    assert page.get_by_text("official Jupyter news").count() == 0, "no news popup on top"
    assert page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']"
                        ).count() == 0, "no cell raised"


def test_the_cgroups_notebook_shows_widgets_and_plots_and_a_slider_acts(browser, jupyterlab):
    lab = jupyterlab
    page = run_all(browser, lab, "03_cgroups.ipynb")
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SHOTS / "03_cgroups.png", full_page=True)
    assert page.locator(".widget-slider").count() >= 2, "the memory and CPU sliders render"
    assert page.locator(".jp-OutputArea-output img").count() >= 2, "the plots appear"
    verdict = page.get_by_text("limit 32 MiB")
    verdict.wait_for(timeout=30_000)
    handle = page.locator(".widget-slider .noUi-handle").first
    handle.click()
    handle.press("ArrowRight")                  # 32 → 48 MiB: the hog runs again
    page.get_by_text("limit 48 MiB").wait_for(timeout=60_000)
    page.screenshot(path=SHOTS / "03_cgroups_slider_moved.png")


def test_run_it_in_jupyterlabs_terminal(browser, jupyterlab):
    """Students in the Vagrant VM have no other terminal: JupyterLab's (xterm.js over a
    websocket to a pty of the server's) must give `run -it` what a terminal gives."""
    # The terminal draws on a canvas; its screen-reader mode keeps the text in the page
    # too, for us to read (a setting of this test server's own settings directory).
    request = urllib.request.Request(
        f"{jupyterlab}/lab/api/settings/@jupyterlab/terminal-extension:plugin", method="PUT",
        data=json.dumps({"raw": json.dumps({"screenReaderMode": True})}).encode(),
        headers={"Authorization": "token test", "Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=30).close()
    page = browser.new_context(viewport={"width": 1200, "height": 800}).new_page()
    page.goto(f"{jupyterlab}/lab/workspaces/terminal?reset&token=test")
    page.get_by_role("menuitem", name="File", exact=True).click()
    page.get_by_text("New", exact=True).hover()
    page.get_by_role("menuitem", name="Terminal").first.click()
    screen = page.locator(".jp-Terminal:not(.lm-mod-hidden) .xterm-accessibility-tree")
    screen.wait_for(state="attached", timeout=60_000)
    page.locator(".jp-Terminal:not(.lm-mod-hidden) .xterm").click()

    def wait_for(text: str) -> None:
        deadline = time.monotonic() + 30
        while text not in screen.inner_text().replace("\xa0", " "):
            if time.monotonic() > deadline:
                page.screenshot(path=SHOTS / "terminal-unexpected.png")
                raise AssertionError(f"{text!r} not in the terminal:\n{screen.inner_text()}")
            time.sleep(0.2)

    def type_line(line: str) -> None:
        page.keyboard.type(line)
        page.keyboard.press("Enter")

    SHOTS.mkdir(parents=True, exist_ok=True)
    try:
        drive_a_shell_in_a_container(page, type_line, wait_for)
    finally:
        subprocess.run([ROOT / ".venv/bin/minicontainer", "rm", "-f", "mc-lab-tty"],
                       capture_output=True)
        Path("/tmp/mc-lab-before").unlink(missing_ok=True)


def drive_a_shell_in_a_container(page, type_line, wait_for) -> None:
    """What a student does: a shell, Ctrl-C, the detach keys, attach, exit 3."""
    type_line("PS1='host$ '; stty -g > /tmp/mc-lab-before; clear")   # a prompt to wait for
    type_line(f"{ROOT}/.venv/bin/minicontainer run -it --name mc-lab-tty -- sh")
    wait_for("/ #")
    type_line("tty; stty size")
    wait_for("/dev/pts/0")
    type_line("sleep 100")
    time.sleep(0.5)
    page.keyboard.press("Control+c")
    type_line("echo status $?")
    wait_for("status 130")
    page.keyboard.press("Control+p")
    page.keyboard.press("Control+q")
    wait_for("detached from mc-lab-tty")
    type_line("clear; stty -g | cmp - /tmp/mc-lab-before && echo same settings")
    wait_for("same settings")
    type_line(f"{ROOT}/.venv/bin/minicontainer attach mc-lab-tty")
    time.sleep(1.5)
    type_line("exit 3")
    wait_for("exit 3\nhost$")          # attach has returned: keys go to the host's shell again
    type_line("echo code $?")
    wait_for("code 3")
    page.screenshot(path=SHOTS / "terminal.png")
