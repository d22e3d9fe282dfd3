"""Where a target's time goes during one bench cell: py-spy's samples of the server, summed
by function (`python -m tests.bench --profile DIR`).

py-spy records the server's processes (uvicorn's worker included) for the cell's length,
as collapsed stacks (`frame;frame;... count`). Each function is given its share of the
busy samples twice: inclusive (samples with it anywhere on the stack) and self (samples
where it is the frame running). Idle samples (py-spy leaves them out) count for neither.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path


def record(pid: int, seconds: float, output: Path) -> subprocess.Popen[bytes]:
    """Start sampling the process tree of `pid` for `seconds` into `output` (raw format)."""
    return subprocess.Popen(
        [_py_spy(), "record", "--pid", str(pid), "--subprocesses", "--nonblocking",
         "--rate", "200", "--duration", str(max(1, round(seconds))),
         "--format", "raw", "--output", str(output)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def _py_spy() -> str:
    """py-spy from the bench extra, beside this Python, or on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy") or "py-spy"


def frame_name(frame: str) -> str:
    """`function (path/to/module.py:12)` -> `function (module.py)`: lines apart, one row."""
    name, _, where = frame.partition(" (")
    module = where.rstrip(")").rsplit(":", 1)[0].rsplit("/", 1)[-1]
    return f"{name} ({module})" if module else name


def shares(collapsed: str) -> tuple[int, Counter[str], Counter[str]]:
    """Busy samples, and per function its inclusive and self sample counts."""
    total = 0
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        # (the first frame is the process and thread: "process 12:...")
        frames = [frame_name(f) for f in stack.split(";")[1:]]
        if not frames:
            continue
        total += n
        for name in set(frames):
            inclusive[name] += n
        own[frames[-1]] += n
    return total, inclusive, own


def summary(path: Path, top: int = 25) -> str:
    """The top functions by self share, each with its inclusive share, as Markdown."""
    total, inclusive, own = shares(path.read_text())
    if not total:
        return f"{path.name}: no samples\n"
    rows = [f"{path.stem}: {total} busy samples", "", "| self % | incl. % | function |",
            "|---|---|---|"]  # fmt: skip
    for name, n in own.most_common(top):
        rows.append(f"| {100 * n / total:.1f} | {100 * inclusive[name] / total:.1f} | {name} |")
    return "\n".join(rows) + "\n"
