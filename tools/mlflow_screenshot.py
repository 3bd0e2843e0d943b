"""Screenshot of a sweep's runs in the MLflow UI, as a new user sees them (for the README).

    python tools/mlflow_screenshot.py URL OUT.png

URL is the runs link a sweep prints (``…/#/experiments/<id>/runs?workflowType=machine_learning``)
on a running ``mlflow ui`` or server. Needs Playwright's Python package and a Chromium
(``apt-get install chromium``; ``pip install playwright``, no browser download): a developer tool,
not a dependency of contra. It closes the assistant panel, expands the sweep's parent run and
adds the Table 1 metric columns, then writes the PNG.
"""

from __future__ import annotations

import sys

COLUMNS = ("eval/mesh_al_mean3d_cm", "eval/f_al_score_5", "eval/f_al_score_15")


def main(url: str, out: str, chromium: str = "/usr/bin/chromium") -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1700, "height": 800})
        page.goto(url)
        page.wait_for_timeout(6000)
        close = page.locator('button[aria-label="Close"]')
        if close.count():
            close.first.click()
        parent = page.locator("text=/^sweep /").first.bounding_box()
        if parent:  # the expand icon left of the parent run's name
            page.mouse.click(parent["x"] - 24, parent["y"] + parent["height"] / 2)
        page.wait_for_timeout(1500)
        page.get_by_role("button", name="Columns", exact=True).click()
        page.wait_for_timeout(1000)
        for column in COLUMNS:
            page.get_by_text(column, exact=True).first.click()
            page.wait_for_timeout(300)
        page.keyboard.press("Escape")
        page.wait_for_timeout(1500)
        page.screenshot(path=out)
        browser.close()


if __name__ == "__main__":
    main(*sys.argv[1:3])
