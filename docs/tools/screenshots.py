"""Screenshots of the built site in headless Chromium, to look at before a release.

    bash docs/tools/fetch_mathjax.sh        # once: MathJax offline
    sphinx-build -n -W --keep-going -b html docs docs/_build/html
    python docs/tools/screenshots.py        # -> docs/_build/screenshots/*.png

Serves docs/_build/html on 127.0.0.1 (fonts and scripts load as on a web
server) and shoots the home page, the SFAM member page (its maths rendered by
MathJax), the first tutorial and the API page of the family. Needs Debian's ``chromium``
(``apt-get install -y chromium``).
"""

from __future__ import annotations

import argparse
import functools
import http.server
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent

#: (name of the png, page under the html folder)
PAGES = [
    ("home", "index.html"),
    ("member-sfam", "members/sfam.html"),
    ("tutorial", None),  # the first tutorial notebook found
    ("api-methods", "api/methods.html"),
]


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    sys.exit("no chromium: apt-get install -y chromium")


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002  (the base's name)
        pass


def serve(root: Path) -> tuple[http.server.ThreadingHTTPServer, int]:
    handler = functools.partial(QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


def shoot(browser: str, url: str, png: Path, width: int, height: int) -> None:
    with tempfile.TemporaryDirectory() as profile:
        cmd = [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            # let MathJax typeset before the shot
            "--virtual-time-budget=20000",
            f"--window-size={width},{height}",
            f"--screenshot={png}",
            url,
        ]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--html", type=Path, default=DOCS / "_build" / "html")
    parser.add_argument("--out", type=Path, default=DOCS / "_build" / "screenshots")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=1600)
    args = parser.parse_args()
    if not (args.html / "index.html").is_file():
        sys.exit(f"no {args.html}/index.html: build the docs first")
    if not (args.html / "_static" / "mathjax" / "tex-chtml.js").is_file():
        print(
            "note: no local MathJax (docs/tools/fetch_mathjax.sh); maths need its CDN"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    browser = chromium()
    server, port = serve(args.html)
    try:
        for name, page in PAGES:
            if page is None:
                found = sorted((args.html / "tutorials" / "notebooks").glob("*.html"))
                if not found:
                    print("no tutorial page found")
                    continue
                page = found[0].relative_to(args.html).as_posix()
            png = args.out / f"{name}.png"
            shoot(
                browser, f"http://127.0.0.1:{port}/{page}", png, args.width, args.height
            )
            print(f"{page} -> {png}")
    finally:
        server.shutdown()


if __name__ == "__main__":
    main()
