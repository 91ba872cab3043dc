"""Open HTML reports in headless Chromium and list what a reader would see broken.

Chromium is Debian's ``chromium`` package, driven through Playwright (the test extra), which
talks to any Chromium over the DevTools protocol: with ``executable_path`` it never downloads a
browser. Playwright waits for loads, follows iframes and reports console messages per page, which
the bare ``chromium --headless --dump-dom`` / ``--screenshot`` cannot (no console, no clicks).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

#: Pixels of a drawn viewer canvas that are not its black background: a blank canvas has none.
DRAWN = """canvas => {
    const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
    let lit = 0;
    for (let i = 0; i < data.length; i += 4) lit += data[i] + data[i + 1] + data[i + 2] > 0;
    return lit;
}"""
#: Images that fail to decode, by alt text (or the start of their address).
UNDECODED = """() => Promise.all([...document.images].map(
    image => image.decode().then(() => null, () => image.alt || image.src.slice(0, 60))
)).then(names => names.filter(name => name !== null))"""


def chromium_or_skip() -> str:
    """Debian's chromium, installed with apt-get when missing (as root); else skip the test."""
    pytest.importorskip('playwright.sync_api', reason='playwright is not installed (test extra)')
    found = shutil.which('chromium')
    if found:
        return found
    if not shutil.which('apt-get') or os.geteuid() != 0:
        pytest.skip('chromium is not installed (apt-get install chromium, as root)')
    result = subprocess.run(
        ['apt-get', 'install', '-y', '--no-install-recommends', 'chromium'],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, 'DEBIAN_FRONTEND': 'noninteractive'},
        check=False,
    )
    found = shutil.which('chromium')
    if not found:
        detail = (result.stderr.strip().splitlines() or ['no output'])[-1]
        pytest.skip(f'chromium is not installed and apt-get install chromium failed: {detail}')
    return found


def browse_report(chromium: str, report: Path, screenshots: Path) -> tuple[list[str], int]:
    """Open ``report``, then each of its viewers; return the problems and the viewers opened.

    Problems: console errors and uncaught exceptions (of the report and of its viewers), images
    that do not decode, requests that leave the local files (a report must work offline) and
    viewers whose canvas stays blank. Screenshots of the page and of each opened viewer go to
    ``screenshots``.
    """
    from playwright.sync_api import sync_playwright

    problems: list[str] = []

    def on_console(message) -> None:
        if message.type == 'error':
            problems.append(f'console error: {message.text}')

    def on_request(request) -> None:
        if not request.url.startswith(('file:', 'data:', 'about:')):
            problems.append(f'network request: {request.url}')

    screenshots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium)
        page = browser.new_page(viewport={'width': 1280, 'height': 900})
        page.on('console', on_console)
        page.on('pageerror', lambda error: problems.append(f'uncaught: {error}'))
        page.on('request', on_request)
        page.goto(report.as_uri(), wait_until='load')
        page.screenshot(path=screenshots / f'{report.stem}.png', full_page=True)
        viewers = page.locator('details.viewer')
        opened = viewers.count()
        for index in range(opened):
            viewer = viewers.nth(index)
            viewer.locator('summary').click()
            frame = viewer.frame_locator('iframe')
            canvas = frame.locator('canvas')
            canvas.wait_for(state='visible')
            frame.locator('body').evaluate(
                '() => new Promise(done => document.readyState === "complete" '
                '? done() : addEventListener("load", done))'
            )
            name = viewer.locator('iframe').get_attribute('data-src')
            if not canvas.evaluate(DRAWN):
                problems.append(f'blank viewer: {name}')
            viewer.screenshot(path=screenshots / f'{report.stem}_viewer{index}.png')
        for frame in page.frames:
            undecoded = frame.evaluate(UNDECODED)
            problems += [f'image does not decode: {name} ({frame.url})' for name in undecoded]
        browser.close()
    return problems, opened
