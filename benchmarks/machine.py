"""What every benchmark records of the machine it ran on, without importing torch (the load
generator of serve.py must stay light); throughput.py adds the torch build and devices."""

from __future__ import annotations

import os
import platform
from datetime import datetime, timezone
from typing import Any


def host_info() -> dict[str, Any]:
    """The date, CPU model (from /proc/cpuinfo on Linux), core count, platform and Python."""
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu or platform.machine(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
