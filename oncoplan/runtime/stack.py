"""The stack Holoscan asks for, given before the process does any work.

Holoscan recommends a 32 MB stack (holoscan/core/__init__.py and application.cpp warn below it: "may cause
segmentation faults"); Debian's default soft limit is 8 MB. glibc sizes every thread's default stack from
RLIMIT_STACK when a process starts, so raising the limit later changes nothing for the graph's threads:
an entry point raises the soft limit and executes itself again, once, before anything heavy is imported.
"""

from __future__ import annotations

import os
import resource
import sys

HOLOSCAN_STACK_BYTES = 32 * 1024 * 1024
_DONE = "ONCOPLAN_STACK_RAISED"  # set for the re-executed process (and its children): never twice


def ensure_holoscan_stack() -> None:
    """Re-execute this process with a soft stack limit of 32 MB when it has less and the hard limit allows
    more; otherwise return (Holoscan's own warning then says what is wrong). Entry points only: it replaces
    the running process."""
    soft, hard = resource.getrlimit(resource.RLIMIT_STACK)
    if os.environ.get(_DONE) or soft == resource.RLIM_INFINITY or soft >= HOLOSCAN_STACK_BYTES:
        return
    if hard != resource.RLIM_INFINITY and hard < HOLOSCAN_STACK_BYTES:
        return
    resource.setrlimit(resource.RLIMIT_STACK, (HOLOSCAN_STACK_BYTES, hard))
    os.environ[_DONE] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
