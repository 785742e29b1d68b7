"""C-STORE ingest of ``serve`` on its own: instances/s and server CPU per instance, optionally profiled.

The harness (``run_vs_orthanc.sh``) gives the comparison with Orthanc; this
is the quick loop for working on the ingest path itself. It starts a fresh
server (``tests.support.servers.make_server``), sends chunks of a generated
dataset with DCMTK ``storescu`` over 1 or more associations, and prints per
chunk the rate, the server's CPU time per instance (user and total, from
/proc) and the wall time per instance. ``--py-spy FILE`` records the server
while it runs (raw collapsed stacks; add ``--gil`` to sample only the
thread holding the GIL).

    python bench/bench_dimse_ingest.py --dataset bench/data/small --n 300 --rounds 3 --associations 4
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.bench_large_instance import dcmtk_storescu
from tests.support.servers import make_server


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, user + system) CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    user, system = int(fields[11]) / tick, int(fields[12]) / tick
    return user, user + system


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=Path("bench/data/small"))
    parser.add_argument("--n", type=int, default=300, help="instances per chunk")
    parser.add_argument("--rounds", type=int, default=3, help="chunks (each new data)")
    parser.add_argument("--associations", type=int, default=1)
    parser.add_argument("--py-spy", dest="py_spy", type=Path, help="record the server with py-spy into this file")
    parser.add_argument("--gil", action="store_true", help="py-spy: only samples holding the GIL")
    args = parser.parse_args()
    files = sorted(args.dataset.rglob("*.dcm"))
    if len(files) < args.n * args.rounds:
        raise SystemExit(f"{args.dataset} has {len(files)} instances; need {args.n * args.rounds}")
    storescu = dcmtk_storescu()
    work = Path(tempfile.mkdtemp(prefix="rr-dimse-"))
    server = make_server(work, log_level="WARNING")
    assert server.process is not None
    pid = server.process.pid
    spy = None
    if args.py_spy:
        cmd = ["py-spy", "record", "-p", str(pid), "-o", str(args.py_spy), "-r", "200", "-f", "raw", "--nonblocking"]
        spy = subprocess.Popen([*cmd, *(["--gil"] if args.gil else [])], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        time.sleep(1)
    env = {**os.environ, "TCP_NODELAY": "1"}
    try:
        for r in range(args.rounds):
            chunk = files[r * args.n:(r + 1) * args.n]
            size = sum(f.stat().st_size for f in chunk)
            user0, total0 = cpu_seconds(pid)
            start = time.perf_counter()
            procs = [subprocess.Popen([storescu, "-aet", "STORESCU", "-aec", server.aet, "127.0.0.1",
                                       str(server.dicom_port), *map(str, chunk[i::args.associations])], env=env)
                     for i in range(args.associations)]
            if any(p.wait() != 0 for p in procs):
                raise SystemExit("storescu failed")
            elapsed = time.perf_counter() - start
            user1, total1 = cpu_seconds(pid)
            n = len(chunk)
            print(f"chunk {r}: {n} instances, {n / elapsed:.0f} inst/s, {size / 1e6 / elapsed:.0f} MB/s, "
                  f"server CPU {(total1 - total0) * 1000 / n:.2f} ms/inst (user {(user1 - user0) * 1000 / n:.2f}), "
                  f"{elapsed * 1000 / n:.2f} ms wall/inst", flush=True)
    finally:
        if spy is not None:
            spy.send_signal(2)
            spy.wait()
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
