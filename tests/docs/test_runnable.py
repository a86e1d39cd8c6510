"""Docs that run: every shell block marked runnable in the README and docs/ runs as
written against a demo fleet, as a reader would run it after `make run`.

A block is runnable when its fence says so (```` ```sh runnable ````; the second word
is ignored when the page is rendered). The blocks of one page run in order in one
bash (`-e -o pipefail`: any failing command fails the test), from a copy of the
checkout made of links to it, after `edgeshield up --state-dir demo-state` there
has printed its commands: the setup `make run` does, without touching the checkout.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(180)

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```sh runnable\n(.*?)^```", re.MULTILINE | re.DOTALL)
READY = "Ctrl-C stops the fleet."


def runnable(page: Path) -> str:
    """The runnable blocks of a page, in order, as one script."""
    return "\n".join(BLOCK.findall(page.read_text(encoding="utf-8")))


PAGES_WITH_BLOCKS = [page for page in PAGES if runnable(page)]


def test_the_pages_that_must_have_runnable_commands_have_them() -> None:
    names = {str(page.relative_to(REPO)) for page in PAGES_WITH_BLOCKS}
    assert {"README.md", "docs/operations.md", "docs/purge-api.md", "docs/dns.md"} <= names


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A checkout (links to this one) with the demo fleet running, as after `make run`."""
    work = tmp_path_factory.mktemp("docs") / "checkout"
    work.mkdir()
    for entry in REPO.iterdir():
        if entry.name not in ("demo-state", ".git", "state", "dist", "build"):
            (work / entry.name).symlink_to(entry)
    log_path = work.parent / "up.log"
    env = {k: v for k, v in os.environ.items() if k != "EDGESHIELD_NODE_SECRET"}
    with open(log_path, "wb") as log:
        up = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "up", "--state-dir", "demo-state"],
            cwd=work,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**env, "EDGESHIELD_ACCESS_LOG": "0"},
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        while READY not in log_path.read_text(errors="replace"):
            assert up.poll() is None, log_path.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, log_path.read_text(errors="replace")[-3000:]
            time.sleep(0.1)
        yield work
    finally:
        up.send_signal(signal.SIGINT)
        try:
            assert up.wait(60) == 0, log_path.read_text(errors="replace")[-3000:]
        finally:
            if up.poll() is None:
                os.killpg(up.pid, signal.SIGKILL)
                up.wait(10)


@pytest.mark.parametrize(
    "page", PAGES_WITH_BLOCKS, ids=[str(p.relative_to(REPO)) for p in PAGES_WITH_BLOCKS]
)
def test_the_runnable_commands_of_a_page_run_as_written(checkout: Path, page: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "EDGESHIELD_TOKEN")}
    done = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", runnable(page)],
        cwd=checkout,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
