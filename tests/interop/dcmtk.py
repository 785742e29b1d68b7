"""Drive dcmtk's command-line tools (storescu, findscu, movescu, getscu, echoscu, dcmcjpeg).

pynetdicom installs console scripts with the same names (``storescu`` …)
that take different options, and a Python environment's ``bin`` usually
comes first on PATH; so the tools are located by asking each candidate on
PATH for its version and keeping the one that is dcmtk's.
"""

from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path

from tests.support.tools import missing


@functools.cache
def _find(name: str) -> str | None:
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        candidate = Path(directory) / name
        if not (candidate.is_file() and os.access(candidate, os.X_OK)):
            continue
        try:
            out = subprocess.run([str(candidate), "--version"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if "dcmtk" in (out.stdout + out.stderr).lower():
            return str(candidate)
    return None


def tool(name: str) -> str:
    """Path of a dcmtk tool, or skip (locally) / fail (in CI) when dcmtk is missing."""
    path = _find(name)
    if path is None:
        missing(f"dcmtk's {name} not installed (apt-get install dcmtk)")
    assert path is not None
    return path


def run(name: str, *args: str, cwd: Path | None = None, timeout: float = 300,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a dcmtk tool with TCP_NODELAY (dcmtk reads it from the environment)."""
    env = {**os.environ, "TCP_NODELAY": "1"}
    result = subprocess.run([tool(name), *args], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{name} {' '.join(args)} exited with {result.returncode}\n"
            f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}"
        )
    return result
