"""Shared helpers for the benchmarks: machine and version facts, load, timing, JSON output and RESULTS.md sections.

Every benchmark writes one JSON file (date, machine, command, versions, load, results) to ``benchmarks/out/`` and may
replace its own section of ``benchmarks/RESULTS.md`` between ``<!-- NAME:start -->`` / ``<!-- NAME:end -->`` markers,
leaving every other section untouched. Standard library only (plus torch, imported lazily), so any venv can use it.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "BENCH_DIR",
    "OUT_DIR",
    "RESULTS_MD",
    "cpu_busy_fraction",
    "git_revision",
    "load_average",
    "machine_info",
    "meminfo_kib",
    "package_versions",
    "read_peak_rss_bytes",
    "read_rss_bytes",
    "replace_section",
    "reset_peak_rss",
    "run_header",
    "time_repeats",
    "utc_stamp",
    "wait_for_quiet",
    "write_json",
    "write_results_section",
]

BENCH_DIR = Path(__file__).resolve().parent
OUT_DIR = BENCH_DIR / "out"
RESULTS_MD = BENCH_DIR / "RESULTS.md"
_RESULTS_HEADER = (
    "# Benchmark results\n\n"
    "Measured numbers, one section per benchmark; each section is rewritten only by its own script "
    "(between its `<!-- NAME:start -->` / `<!-- NAME:end -->` markers). Raw JSON lives in `benchmarks/out/`.\n"
)


def utc_stamp(now: dt.datetime | None = None) -> str:
    """UTC timestamp usable in file names, e.g. ``20261123T0110Z``."""
    now = now or dt.datetime.now(dt.UTC)
    return now.strftime("%Y%m%dT%H%MZ")


def _lscpu_field(text: str, field: str) -> str | None:
    match = re.search(rf"^{re.escape(field)}:\s*(.+)$", text, flags=re.MULTILINE)
    return match.group(1).strip() if match else None


def meminfo_kib(field: str) -> int | None:
    """A ``/proc/meminfo`` field (e.g. ``"MemAvailable"``) in KiB, or ``None`` where procfs or the field is missing."""
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    match = re.search(rf"^{re.escape(field)}:\s+(\d+) kB", text, flags=re.MULTILINE)
    return int(match.group(1)) if match else None


def machine_info() -> dict[str, Any]:
    """CPU model, core count, RAM, OS and the accelerator (if torch sees one)."""
    info: dict[str, Any] = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
    }
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        lscpu = ""
    info["cpu_model"] = _lscpu_field(lscpu, "Model name") or platform.processor()
    flags = (_lscpu_field(lscpu, "Flags") or "").split()
    info["cpu_isa"] = [flag for flag in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if flag in flags]
    total_kib = meminfo_kib("MemTotal")
    info["ram_gib"] = None if total_kib is None else round(total_kib / 2**20, 1)
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return info


def package_versions(names: tuple[str, ...] = ("torch", "timm", "torchvision", "numpy", "rsvheat")) -> dict[str, str]:
    """Installed versions of ``names``; missing packages are reported as ``"not installed"``."""
    versions: dict[str, str] = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_revision(repo: Path = BENCH_DIR.parent) -> str | None:
    """Short commit of the working tree, with ``+dirty`` when it has uncommitted changes; ``None`` outside git."""
    try:
        rev = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    if not rev:
        return None
    return f"{rev}+dirty" if dirty else rev


def load_average() -> dict[str, float]:
    """The 1/5/15-minute load averages (what ``uptime`` prints)."""
    one, five, fifteen = os.getloadavg()
    return {"1m": round(one, 2), "5m": round(five, 2), "15m": round(fifteen, 2)}


def run_header(argv: list[str] | None = None) -> dict[str, Any]:
    """The common head of every benchmark JSON: date, command, machine, versions, git revision, load at start."""
    argv = sys.argv if argv is None else argv
    return {
        "date_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(part) for part in [Path(sys.executable).name, *argv]),
        "machine": machine_info(),
        "versions": package_versions(),
        "git": git_revision(),
        "load_start": load_average(),
    }


def write_json(record: dict[str, Any], name: str, out_dir: Path = OUT_DIR) -> Path:
    """Write ``record`` to ``out_dir/<name>-<utc stamp>.json`` and return the path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}-{utc_stamp()}.json"
    path.write_text(json.dumps(record, indent=2, sort_keys=False, default=str) + "\n")
    return path


def replace_section(document: str, name: str, body: str) -> str:
    """Return ``document`` with the text between the ``name`` markers replaced by ``body`` (appended if absent).

    Args:
        document: the current markdown text (may be empty).
        name: section key; markers are ``<!-- name:start -->`` and ``<!-- name:end -->``.
        body: the new section text, without markers.

    Raises:
        ValueError: the document has one marker without the other, or a marker twice.
    """
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    counts = (document.count(start), document.count(end))
    block = f"{start}\n{body.strip()}\n{end}"
    match counts:
        case (0, 0):
            base = document.rstrip("\n") or _RESULTS_HEADER.rstrip("\n")
            return f"{base}\n\n{block}\n"
        case (1, 1) if document.index(start) < document.index(end):
            head, rest = document.split(start, 1)
            _, tail = rest.split(end, 1)
            return f"{head}{block}{tail}"
        case _:
            raise ValueError(
                f"Section {name!r} has {counts[0]} start and {counts[1]} end markers (or they are out of order); "
                f"expected exactly one `{start}` followed by one `{end}`. Fix the markers in the file by hand."
            )


def write_results_section(name: str, body: str, path: Path = RESULTS_MD) -> Path:
    """Replace this benchmark's section of ``RESULTS.md``, re-reading the file immediately before writing."""
    current = path.read_text() if path.exists() else ""
    path.write_text(replace_section(current, name, body))
    return path


def read_rss_bytes() -> int:
    """Current resident set size of this process (``VmRSS``)."""
    return _proc_status_bytes("VmRSS")


def read_peak_rss_bytes() -> int:
    """Peak resident set size of this process since start or the last :func:`reset_peak_rss` (``VmHWM``)."""
    return _proc_status_bytes("VmHWM")


def reset_peak_rss() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux ``/proc/self/clear_refs`` value 5); ``False`` if unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _proc_status_bytes(field: str) -> int:
    status = Path("/proc/self/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB", status, flags=re.MULTILINE)
    if match is None:
        raise RuntimeError(f"/proc/self/status has no {field!r} line; peak-memory measurement needs Linux procfs.")
    return int(match.group(1)) * 1024


def time_repeats(fn: Callable[[], Any], *, min_repeats: int, max_repeats: int, budget_s: float) -> dict[str, Any]:
    """Call ``fn`` at least ``min_repeats`` times and at most ``max_repeats``, stopping once ``budget_s`` is spent.

    Records wall time and this process's CPU time (all threads) per call. On a shared machine the CPU time is the
    load-robust figure: other processes stretch the wall time but not the work done (set ``OMP_WAIT_POLICY=PASSIVE``
    so waiting OpenMP threads sleep instead of spinning, or the CPU time counts the spinning too).

    Returns:
        ``{"times_s", "cpu_times_s", "median_s", "min_s", "median_cpu_s", "repeats"}``.
    """
    if min_repeats < 1 or max_repeats < min_repeats:
        raise ValueError(f"Need 1 <= min_repeats <= max_repeats, got min_repeats={min_repeats}, max={max_repeats}.")
    times: list[float] = []
    cpu_times: list[float] = []
    started = time.perf_counter()
    while len(times) < max_repeats:
        cpu, tick = time.process_time(), time.perf_counter()
        fn()
        times.append(time.perf_counter() - tick)
        cpu_times.append(time.process_time() - cpu)
        if len(times) >= min_repeats and time.perf_counter() - started >= budget_s:
            break
    return {
        "times_s": [round(t, 5) for t in times],
        "cpu_times_s": [round(t, 5) for t in cpu_times],
        "median_s": statistics.median(times),
        "min_s": min(times),
        "median_cpu_s": statistics.median(cpu_times),
        "repeats": len(times),
    }


def _cpu_ticks() -> tuple[int, int]:
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields[:8]), idle


def cpu_busy_fraction(window_s: float = 1.0) -> float:
    """Fraction of all CPUs busy over ``window_s`` (from ``/proc/stat``); call it while this process is idle."""
    total0, idle0 = _cpu_ticks()
    time.sleep(window_s)
    total1, idle1 = _cpu_ticks()
    elapsed = total1 - total0
    return 0.0 if elapsed <= 0 else 1.0 - (idle1 - idle0) / elapsed


def wait_for_quiet(max_busy: float = 0.25, max_wait_s: float = 60.0, poll_s: float = 2.0) -> dict[str, float]:
    """Wait (at most ``max_wait_s``) until other processes use at most ``max_busy`` of the CPUs.

    Returns:
        ``{"busy": last measured fraction, "waited_s": seconds waited}``; the caller records both, so results taken
        on a busy machine are marked as such rather than silently mixed in.
    """
    started = time.perf_counter()
    busy = cpu_busy_fraction()
    while busy > max_busy and time.perf_counter() - started < max_wait_s:
        time.sleep(poll_s)
        busy = cpu_busy_fraction()
    return {"busy": round(busy, 3), "waited_s": round(time.perf_counter() - started, 1)}
