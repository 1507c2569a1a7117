"""Screenshots of the device's web page during ``edge-cl demo``, for the docs.

    python scripts/ui_screenshot.py [--out docs/ui] [--port 8091]

Starts ``edge-cl demo --ui 127.0.0.1:PORT`` and opens its page in headless Chromium (Debian's
``/usr/bin/chromium``, driven by Playwright). It takes ``teaching.png`` while the demo holds the
teach button for its fourth object (not learned yet, so "unknown") and ``taught.png`` once all
four are learned and the device names what it sees; each moment is recognised from what the
page shows, not from the clock.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 180_000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/ui"))
    parser.add_argument("--port", type=int, default=8091)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    url = f"http://127.0.0.1:{args.port}/"
    demo = subprocess.Popen(
        [sys.executable, "-m", "edge_cl.cli", "demo", "--ui", f"127.0.0.1:{args.port}"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert demo.stdout is not None
        for line in demo.stdout:  # the demo prints its page's address once the loop runs
            print(line, end="")
            if line.startswith("web page: "):
                url = line.split()[2]
                break
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=args.chromium, args=CHROMIUM_FLAGS)
            page = browser.new_page(viewport={"width": 1180, "height": 640})
            page.set_default_timeout(WAIT_MS)
            page.goto(url)
            page.wait_for_function(
                "document.querySelectorAll('#classes tbody tr').length >= 3 && "
                "document.getElementById('state').textContent.startsWith('teaching')"
            )
            page.screenshot(path=str(args.out / "teaching.png"))
            page.wait_for_function(
                "document.querySelectorAll('#classes tbody tr').length >= 4 && "
                "document.getElementById('state').textContent === 'idle' && "
                "/^[a-z ]+ [01][.][0-9][0-9]$/.test(document.getElementById('verdict').textContent)"
                " && /^([2-9]|[0-9]{2,}) s ago$/.test("
                "document.getElementById('last-update').textContent)"
            )
            page.screenshot(path=str(args.out / "taught.png"))
            browser.close()
        for line in demo.stdout:
            print(line, end="")
        return demo.wait()
    finally:
        if demo.poll() is None:
            demo.terminate()
            demo.wait()


if __name__ == "__main__":
    sys.exit(main())
