"""The peak resident set of this process and its reset, for the tests that bound memory.

Child interpreters use it too (``test_hardening``): keep it importable with the standard
library alone."""

from __future__ import annotations

import sys


def peak_reset() -> bool:
    """Reset the peak RSS (VmHWM) to the current RSS, where the kernel allows it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss() -> int:
    """The peak RSS in bytes: Linux's ``VmHWM`` (which ``peak_reset`` brings down), elsewhere
    ``ru_maxrss``."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource  # POSIX only: imported where there is no /proc

    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024
