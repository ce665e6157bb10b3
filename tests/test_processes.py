"""A command the demo starts ends with the demo, even when the demo is killed outright."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from onshore.processes import STOP_WITH_ENV

CHILD = """
import os, sys, time
from onshore.processes import stop_with_parent
stop_with_parent()
print(os.getpid(), os.environ.get({env!r}, "-"), flush=True)
time.sleep(120)
"""

PARENT = """
import os, subprocess, sys, time
env = dict(os.environ)
if sys.argv[1] == "armed":
    env[{env!r}] = str(os.getpid())
child = subprocess.Popen(
    [sys.executable, "-c", {child!r}], env=env, stdout=subprocess.PIPE, text=True
)
print(child.stdout.readline().strip(), flush=True)
time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has ended; only its parent's wait is missing


def _orphan(armed: bool) -> tuple[int, str]:
    """Start a parent that starts a child, kill the parent outright, return the child's PID
    and what it saw of the variable."""
    script = PARENT.format(env=STOP_WITH_ENV, child=CHILD.format(env=STOP_WITH_ENV))
    parent = subprocess.Popen(
        [sys.executable, "-c", script, "armed" if armed else "plain"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert parent.stdout is not None
    with parent.stdout:
        pid_text, seen = parent.stdout.readline().split()
    parent.send_signal(signal.SIGKILL)
    parent.wait(10)
    return int(pid_text), seen


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux's parent-death signal")
def test_a_child_ends_with_the_process_that_named_itself() -> None:
    child, seen = _orphan(armed=True)
    assert seen == "-", "the variable is not passed on to the child's own children"
    deadline = time.monotonic() + 20
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(child), "the child outlived the parent that was killed"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux's parent-death signal")
def test_without_the_variable_a_child_outlives_its_parent() -> None:
    child, _ = _orphan(armed=False)
    try:
        time.sleep(2)
        assert _alive(child)
    finally:
        if _alive(child):
            os.kill(child, signal.SIGTERM)  # the child this test started, by its PID
