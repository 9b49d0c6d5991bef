"""This process's resident memory from /proc/self/status (Linux), for the benchmarks' memory columns."""

from pathlib import Path


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def rss_gb() -> float:
    """Resident set size now, in GB (10**9 bytes)."""
    return _status_kb("VmRSS") * 1024 / 1e9


def peak_rss_gb() -> float:
    """The resident set's high-water mark since the start or the last :func:`reset_peak_rss`, in GB."""
    return _status_kb("VmHWM") * 1024 / 1e9


def reset_peak_rss() -> None:
    """Start the high-water mark again from the present resident set (Linux 4.0+)."""
    Path("/proc/self/clear_refs").write_text("5")
