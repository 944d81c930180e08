"""Processes a stage starts (llama.cpp's converter, its server) end with the stage: a stage killed
by SIGTERM or SIGKILL must not leave a child writing files or answering on a port."""

from __future__ import annotations

import signal
import sys


def die_with_parent() -> None:
    """For subprocess's `preexec_fn`: the child gets SIGTERM when its parent dies (Linux:
    PR_SET_PDEATHSIG; elsewhere nothing is set)."""
    if sys.platform == "linux":
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
