"""Headless Chromium, for tests that read a page the way a reader's browser shows it.

Snakemake's HTML report is a React app: its text exists only after its scripts ran, so reading
report.html's bytes says nothing about what a reader sees. `chromium.dump_dom(page)` runs the
page's scripts in Debian's `chromium` and returns the DOM they left; `visible_text`,
`tables` and `images` read that DOM without the script sources and the hidden elements.

`chromium` is installed with apt-get when /usr/bin/chromium is missing (CI starts on a fresh
machine; this needs root); the fixture skips, with apt's own words, only where that fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = "chromium"
BINARY = Path("/usr/bin/chromium")
APT_TIMEOUT_S = 900
# Chromium's own wait for the page's scripts and timers, in virtual time (a page that never
# settles ends here instead of hanging the test).
VIRTUAL_TIME_BUDGET_MS = 10_000
DUMP_TIMEOUT_S = 120
# No GPU, no sandbox (we are root in a container), and nothing that reaches for a network:
# the tests run offline and a headless start must not wait on updates or sync.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
NOT_SHOWN = ("script", "style", "noscript", "template", "head")


def _install() -> None:
    """apt-get the package once; skip (with apt's own words) only where it cannot be had."""
    if BINARY.exists():
        return
    if os.geteuid() != 0:
        pytest.skip(f"{BINARY} is missing and apt-get needs root")
    if shutil.which("apt-get") is None:
        pytest.skip(f"{BINARY} is missing and there is no apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    lock_wait = ["-o", "DPkg::Lock::Timeout=300"]  # another apt on a shared runner
    for command in (
        ["apt-get", *lock_wait, "update"],
        ["apt-get", *lock_wait, "install", "-y", PACKAGE],
    ):
        try:
            result = subprocess.run(
                command, capture_output=True, text=True, env=env, timeout=APT_TIMEOUT_S
            )
        except subprocess.TimeoutExpired:
            pytest.skip(
                f"chromium cannot be installed: `{' '.join(command)}` ran {APT_TIMEOUT_S} s"
            )
        if result.returncode != 0:
            tail = (result.stderr or result.stdout).strip()[-600:]
            pytest.skip(f"chromium cannot be installed: `{' '.join(command)}` failed: {tail}")
    if not BINARY.exists():
        raise RuntimeError(f"apt-get installed {PACKAGE} but {BINARY} is still missing")


@dataclass(frozen=True)
class Chromium:
    binary: Path

    def dump_dom(self, page: Path) -> str:
        """The DOM of `page` (a local file) after its scripts ran, with no click."""
        with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
            result = subprocess.run(
                [
                    str(self.binary),
                    *FLAGS,
                    f"--user-data-dir={profile}",
                    f"--virtual-time-budget={VIRTUAL_TIME_BUDGET_MS}",
                    "--dump-dom",
                    page.resolve().as_uri(),
                ],
                capture_output=True,
                text=True,
                timeout=DUMP_TIMEOUT_S,
            )
        if result.returncode != 0 or not result.stdout.strip():
            raise RuntimeError(f"chromium --dump-dom failed: {result.stderr[-2000:]}")
        return result.stdout


def _shown(dom: str):  # -> lxml.html.HtmlElement (lxml ships no type stubs)
    """The body of `dom` without what a reader never sees: script and style sources, and
    elements hidden by the `hidden` attribute or an inline `display: none`. Stylesheet rules are
    not applied; a page that hides by class needs a screenshot, not this."""
    import lxml.html

    root = lxml.html.fromstring(dom)
    for element in root.xpath("//*[@hidden] | //*[@style]"):
        style = (element.get("style") or "").replace(" ", "").lower()
        if element.get("hidden") is not None or "display:none" in style:
            element.drop_tree()
    for element in root.xpath(" | ".join(f"//{tag}" for tag in NOT_SHOWN)):
        element.drop_tree()
    return root


def visible_text(dom: str) -> str:
    """The shown text of `dom`, whitespace collapsed to single spaces."""
    return " ".join(_shown(dom).text_content().split())


def tables(dom: str) -> list[list[list[str]]]:
    """Every shown table of `dom`: its rows (header rows included), each a list of cell texts."""
    return [
        [[" ".join(cell.text_content().split()) for cell in row.xpath("th|td")] for row in rows]
        for rows in (table.xpath(".//tr") for table in _shown(dom).xpath("//table"))
    ]


def images(dom: str) -> list[str]:
    """The src of every shown image of `dom` (a data: URI for an embedded one)."""
    return [str(src) for src in _shown(dom).xpath("//img/@src")]


@pytest.fixture(scope="session")
def chromium() -> Chromium:
    _install()
    return Chromium(BINARY)
