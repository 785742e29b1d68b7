"""Blob store for the original DICOM bytes.

Bytes are sacred (principle 4): an object is written to a staging file on the
same filesystem, flushed and fsynced, then renamed into place. A crash at any
point leaves either no object or a complete one, never a torn file. Keys are
content-addressed (SOP Instance UID hash + content hash), so two different
objects can never overwrite each other and rewriting identical bytes is
harmless.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlparse

CHUNK = 1024 * 1024


def blob_key(sop_instance_uid: str, sha256: str) -> str:
    """The key of an instance's bytes: stable, path-safe whatever the UID holds."""
    h = hashlib.sha1(sop_instance_uid.encode("utf-8", "replace")).hexdigest()
    return f"{h[:2]}/{h[2:4]}/{h}-{sha256[:16]}.dcm"


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, read in chunks so size never matters."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class BlobStore(ABC):
    """Where instance bytes live. Staging is always a local file."""

    @abstractmethod
    def new_staging_path(self, suffix: str = ".part") -> Path:
        """A fresh path for writing an object before it is committed."""

    @abstractmethod
    def commit(self, staged: Path, key: str) -> None:
        """Durably move a staged file to ``key`` (atomic: all or nothing)."""

    @abstractmethod
    def open(self, key: str) -> BinaryIO:
        """Open an object for reading."""

    @abstractmethod
    def local_path(self, key: str) -> Path | None:
        """A filesystem path for zero-copy serving, if the store has one."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def size(self, key: str) -> int: ...

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove an object; missing objects are not an error."""

    @abstractmethod
    def iter_keys(self) -> Iterator[str]:
        """Every committed object's key."""

    @property
    @abstractmethod
    def staging_dir(self) -> Path:
        """Directory for staging files (same filesystem as committed objects)."""

    def prefetch(self, key: str) -> None:
        """Hint that ``key`` will be read soon (no-op unless the store can start reading ahead)."""
        return None

    def sha256(self, key: str) -> str:
        """Hash of a stored object."""
        digest = hashlib.sha256()
        with self.open(key) as fh:
            while chunk := fh.read(CHUNK):
                digest.update(chunk)
        return digest.hexdigest()

    def clean_staging(self, older_than_seconds: float = 3600) -> int:
        """Remove staging leftovers of crashed writes; returns how many."""
        import time

        removed = 0
        cutoff = time.time() - older_than_seconds
        for entry in self.staging_dir.iterdir():
            try:
                if entry.is_file() and entry.stat().st_mtime < cutoff:
                    entry.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        return removed


class DirectoryBlobStore(BlobStore):
    """Objects as files under ``root/objects``; staging under ``root/tmp``."""

    def __init__(self, root: Path, fsync: bool = True) -> None:
        self.root = root
        self.objects = root / "objects"
        self._staging = root / "tmp"
        self.objects.mkdir(parents=True, exist_ok=True)
        self._staging.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync

    @property
    def staging_dir(self) -> Path:
        return self._staging

    def new_staging_path(self, suffix: str = ".part") -> Path:
        return self._staging / f"{uuid.uuid4().hex}{suffix}"

    def _path(self, key: str) -> Path:
        if ".." in key or key.startswith("/"):
            raise ValueError(f"invalid blob key {key!r}")
        return self.objects / key

    def commit(self, staged: Path, key: str) -> None:
        target = self._path(key)
        if self.fsync:
            fd = os.open(staged, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        try:
            os.replace(staged, target)
        except FileNotFoundError:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged, target)
        if self.fsync:
            dfd = os.open(target.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)

    def open(self, key: str) -> BinaryIO:
        return open(self._path(key), "rb")

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    def prefetch(self, key: str) -> None:
        """Ask the kernel to read the file into the page cache in the background.

        A study retrieve reads one file after another; when they are no longer
        cached, the next file's disk reads then overlap the current file's
        sending instead of following it.
        """
        if not hasattr(os, "posix_fadvise"):
            return
        try:
            fd = os.open(self._path(key), os.O_RDONLY)
        except OSError:
            return
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass
        finally:
            os.close(fd)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        return self._path(key).stat().st_size

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink()
        except FileNotFoundError:
            pass

    def iter_keys(self) -> Iterator[str]:
        for dirpath, _dirs, files in os.walk(self.objects):
            rel = os.path.relpath(dirpath, self.objects)
            for name in files:
                yield name if rel == "." else f"{rel}/{name}"


def open_blob_store(url: str) -> BlobStore:
    """Build the blob store a URL names (``file:///path``; ``s3://`` comes with scale-out)."""
    parsed = urlparse(url)
    if parsed.scheme in ("file", ""):
        return DirectoryBlobStore(Path(parsed.path if parsed.scheme else url))
    raise ValueError(f"unsupported storage URL scheme {parsed.scheme!r} (supported: file://)")


def copy_to_staging(store: BlobStore, src: BinaryIO | Path) -> Path:
    """Copy a file or stream into a new staging file (streamed, never whole in memory)."""
    staged = store.new_staging_path()
    with open(staged, "wb") as out:
        if isinstance(src, Path):
            with open(src, "rb") as fh:
                shutil.copyfileobj(fh, out, CHUNK)
        else:
            shutil.copyfileobj(src, out, CHUNK)
    return staged


def temp_dir_for(store: BlobStore) -> str:
    """A temp dir on the blob store's filesystem, for libraries that write temp files."""
    return str(store.staging_dir) if store.staging_dir.exists() else tempfile.gettempdir()
