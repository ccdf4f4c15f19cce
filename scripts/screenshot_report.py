"""Render a study's report and save a full-page PNG of it, taken by headless Chromium.

Needs Debian's ``chromium`` (``apt-get install -y chromium``) and the ``playwright`` Python
package, which drives it; no browser is downloaded.

Example:
    .. code-block:: console

        $ python scripts/screenshot_report.py --storage sqlite:///studies.db.example \\
              --study sst2-lora -o docs/report.png
"""

from __future__ import annotations

import argparse
import pathlib
import shutil
import sys
import tempfile

# The flags keep Chromium from reaching the network or its update services.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Figures are drawn by scripts after load: wait until every plot div holds its SVG.
ALL_FIGURES_DRAWN = """() => {
  const divs = [...document.querySelectorAll('div.plotly-graph-div')];
  return divs.every(d => d.querySelector('svg.main-svg'));
}"""


def find_chromium() -> str | None:
    """Return the path of the system Chromium, or None when it is not installed."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def screenshot(html_path: pathlib.Path, png_path: pathlib.Path, width: int = 1280) -> list[str]:
    """Open ``html_path`` from disk, wait for every figure, and save a full-page PNG.

    Args:
        html_path:
            The report to open.
        png_path:
            Where to save the screenshot.
        width:
            Viewport width in CSS pixels.

    Returns:
        The browser console's errors (and page errors); empty when the page is clean.

    Raises:
        FileNotFoundError: Chromium is not installed.
    """
    from playwright.sync_api import sync_playwright

    chromium = find_chromium()
    if chromium is None:
        raise FileNotFoundError(
            "Chromium not found: install it with `apt-get install -y chromium`."
        )
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(html_path.resolve().as_uri(), wait_until="load")
            page.wait_for_function(ALL_FIGURES_DRAWN, timeout=60_000)
            png_path.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(png_path), full_page=True)
        finally:
            browser.close()
    return errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", required=True, help="storage URL, e.g. sqlite:///studies.db")
    parser.add_argument("--study", required=True, help="study name")
    parser.add_argument("-o", "--output", default="docs/report.png", help="PNG to write")
    parser.add_argument("--html", help="also keep the report's HTML at this path")
    parser.add_argument("--width", type=int, default=1280, help="viewport width in CSS pixels")
    args = parser.parse_args(argv)

    import optuna

    from hpo.report import write_report
    from hpo.storage import redact_url

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=args.study, storage=args.storage)
    with tempfile.TemporaryDirectory() as tmp:
        html_path = pathlib.Path(args.html) if args.html else pathlib.Path(tmp) / "report.html"
        write_report(study, html_path, storage_label=redact_url(args.storage))
        errors = screenshot(html_path, pathlib.Path(args.output), width=args.width)
    for error in errors:
        print(f"console error: {error}", file=sys.stderr)
    print(args.output)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
