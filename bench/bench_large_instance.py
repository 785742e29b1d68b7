"""Memory of ``readingroom serve`` while a very large instance goes in and out.

Whole-slide microscopy and long cine loops reach hundreds of MB to several GB
per instance, so ingest and retrieval must stream. This script writes one
large multi-frame instance to disk without holding it in memory, starts a
fresh server, sends the instance by C-STORE (dcmtk ``storescu``) and by
STOW-RS (streamed request body), retrieves it by WADO-RS, and prints the
server's peak resident memory (VmHWM) after each step.

    .venv/bin/python bench/bench_large_instance.py --size-mb 1024
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.servers import make_server


def write_large_instance(path: Path, size_mb: int, study_uid: str) -> Path:
    """A multi-frame 8-bit secondary capture of about ``size_mb`` MB, written in chunks."""
    rows = cols = 1024
    frames = max(1, size_mb * 1024 * 1024 // (rows * cols))
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    sop = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, sop
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, generate_uid()
    ds.PatientName, ds.PatientID, ds.Modality = "Large^Instance", "LARGE1", "OT"
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, cols, frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    length = rows * cols * frames
    tmp = path.with_suffix(".hdr")
    ds.save_as(tmp, enforce_file_format=True)
    chunk = bytes(range(256)) * (rows * cols // 256)
    with open(path, "wb") as out:
        out.write(tmp.read_bytes())
        # (7FE0,0010) OB, explicit VR little endian, 32-bit length
        out.write(b"\xe0\x7f\x10\x00OB\x00\x00" + length.to_bytes(4, "little"))
        for _ in range(frames):
            out.write(chunk)
    tmp.unlink()
    return path


def dcmtk_storescu() -> str:
    """DCMTK's storescu: pynetdicom installs a Python one of the same name that may come first on PATH."""
    for candidate in ("/usr/bin/storescu", shutil.which("storescu")):
        if candidate and os.path.exists(candidate):
            probe = subprocess.run([candidate, "--version"], capture_output=True, text=True)
            if "dcmtk" in probe.stdout.lower():
                return candidate
    raise SystemExit("needs DCMTK's storescu (apt-get install dcmtk)")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def current_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def stow_body(path: Path, boundary: str) -> Iterator[bytes]:
    yield f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            yield chunk
    yield f"\r\n--{boundary}--\r\n".encode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=1024)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rr-large-"))
    try:
        src = write_large_instance(work / "large.dcm", args.size_mb, generate_uid())
        second = write_large_instance(work / "large2.dcm", args.size_mb, generate_uid())
        size = src.stat().st_size / 1e6
        print(f"instance: {size:.0f} MB")
        server = make_server(work, log_level="WARNING")
        assert server.process is not None
        pid = server.process.pid
        print(f"server idle: RSS {current_rss_mb(pid):.0f} MB")
        t = time.perf_counter()
        env = {**os.environ, "TCP_NODELAY": "1"}
        subprocess.run([dcmtk_storescu(), "-aet", "TESTSCU", "-aec", server.aet, "127.0.0.1", str(server.dicom_port),
                        str(src)], check=True, env=env)
        print(f"C-STORE: {size / (time.perf_counter() - t):.0f} MB/s, peak RSS {peak_rss_mb(pid):.0f} MB")
        boundary = "rrlargeboundary"
        t = time.perf_counter()
        r = httpx.post(f"{server.dicomweb_url}/studies", content=stow_body(second, boundary), timeout=600,
                       headers={**server.auth_headers,
                                "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
        print(f"STOW-RS: HTTP {r.status_code}, {size / (time.perf_counter() - t):.0f} MB/s, "
              f"peak RSS {peak_rss_mb(pid):.0f} MB")
        import pydicom

        study = pydicom.dcmread(src, stop_before_pixels=True).StudyInstanceUID
        t = time.perf_counter()
        received = 0
        accept = {**server.auth_headers, "Accept": 'multipart/related; type="application/dicom"'}
        with httpx.stream("GET", f"{server.dicomweb_url}/studies/{study}", timeout=600, headers=accept) as resp:
            for chunk in resp.iter_bytes(1 << 20):
                received += len(chunk)
        print(f"WADO-RS: HTTP {resp.status_code}, {received / 1e6 / (time.perf_counter() - t):.0f} MB/s, "
              f"peak RSS {peak_rss_mb(pid):.0f} MB")
        server.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
