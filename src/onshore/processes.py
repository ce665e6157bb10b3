"""How the processes onshore starts end with the process that started them."""

from __future__ import annotations

import os
import signal
import sys
from typing import Final

__all__ = ["FAILPOINT_ENV", "STOP_WITH_ENV", "failpoint", "stop_with_parent"]

STOP_WITH_ENV: Final = "ONSHORE_STOP_WITH"
"""Set by a process that starts ``onshore`` commands (the demo) to its own PID: the command
then ends when that process does, however it ends."""


def stop_with_parent() -> None:
    """End this process (SIGTERM) when the process named in :data:`STOP_WITH_ENV` ends, even if
    it is killed outright (Linux's parent-death signal); nothing elsewhere. The variable is
    taken out of the environment, so this process's own children (a SuperLink) are stopped
    by it, as usual, and do not answer to a grandparent."""
    parent = os.environ.pop(STOP_WITH_ENV, "")
    if not parent.isdigit() or not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0) != 0:
        return
    if os.getppid() != int(parent):  # it ended before the signal was armed
        os.kill(os.getpid(), signal.SIGTERM)


FAILPOINT_ENV: Final = "ONSHORE_FAILPOINT"
"""Names the point (see :func:`failpoint`) at which this process kills itself: the kill tests
set it to stop a command, or a service, outright between two of its steps."""


def failpoint(name: str) -> None:
    """Die here, by SIGKILL, when :data:`FAILPOINT_ENV` names this point: how the kill tests
    stop an erasure between any two of its steps, as a power cut would. Nothing otherwise."""
    if os.environ.get(FAILPOINT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
