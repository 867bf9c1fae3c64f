"""Run and sweep artifacts on any storage pyarrow resolves: a local path, s3://, gs://, file://.

Ray Train and Tune persist checkpoints through `pyarrow.fs`; sslray writes its own small files
(config.json, result.json, sweep.json, pseudo-labels) through the same filesystem, so a sweep
whose storage is a bucket keeps everything in the bucket and a multi-node cluster never depends
on a local disk of the head node.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import pyarrow.fs as pafs

from sslray.atomic_file import atomic_write


def is_uri(location: str) -> bool:
    return "://" in location


@dataclass(frozen=True)
class Location:
    """A directory on a filesystem: `fs` + a prefix-free `path` (what pyarrow calls fs_path)."""

    fs: pafs.FileSystem
    path: str
    uri: str  # the user's spelling, for messages and for Ray's storage_path

    def child(self, *parts: str) -> Location:
        path = PurePosixPath(self.path, *parts).as_posix()
        if not is_uri(self.uri):
            return Location(self.fs, path, path)
        base, sep, query = self.uri.partition("?")  # keep query parameters (region, endpoint)
        return Location(self.fs, path, base.rstrip("/") + "/" + "/".join(parts) + sep + query)

    def sibling(self, name: str) -> Location:
        """Another file in this file's folder (e.g. clusters.json beside pseudo_labels.npy)."""
        path = PurePosixPath(self.path).with_name(name).as_posix()
        base, sep, query = self.uri.partition("?")
        return Location(self.fs, path, base.rsplit("/", 1)[0] + "/" + name + sep + query)

    @property
    def name(self) -> str:
        return PurePosixPath(self.path).name

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def exists(self, *parts: str) -> bool:
        target = self.child(*parts).path if parts else self.path
        return self.fs.get_file_info(target).type != pafs.FileType.NotFound

    def makedirs(self) -> None:
        self.fs.create_dir(self.path, recursive=True)

    def read_bytes(self, *parts: str) -> bytes:
        with self.fs.open_input_stream(self.child(*parts).path) as f:
            return bytes(f.read())

    def read_text(self, *parts: str) -> str:
        return self.read_bytes(*parts).decode()

    def write_bytes(self, data: bytes, *parts: str) -> None:
        """Write a file whole; on a local disk atomically (a temporary name, then a rename)."""
        target = self.child(*parts)
        if target.is_local:  # a full disk or a lost mount: the old file stays as it was
            atomic_write(Path(target.path), data)
            return
        self.fs.create_dir(str(PurePosixPath(target.path).parent), recursive=True)
        with self.fs.open_output_stream(target.path) as f:  # object stores: one PUT, atomic
            f.write(data)

    def write_text(self, text: str, *parts: str) -> None:
        self.write_bytes(text.encode(), *parts)

    def append_line(self, line: str, *parts: str) -> None:
        """Append one line (object stores cannot append: read, extend, write back)."""
        old = self.read_text(*parts) if self.exists(*parts) else ""
        self.write_text(old + line.rstrip("\n") + "\n", *parts)

    def save_npy(self, array: np.ndarray, *parts: str) -> None:
        buf = io.BytesIO()
        np.save(buf, array, allow_pickle=False)
        self.write_bytes(buf.getvalue(), *parts)

    def load_npy(self, *parts: str) -> np.ndarray:
        return np.load(io.BytesIO(self.read_bytes(*parts)), allow_pickle=False)


def location(where: str | Path) -> Location:
    """A Location for a local path (made absolute) or a URI such as s3://bucket/prefix."""
    where = str(where)
    if is_uri(where) and not where.startswith("file://"):
        fs, path = pafs.FileSystem.from_uri(where)
        return Location(fs, path.rstrip("/"), where)
    local = where[len("file://"):] if where.startswith("file://") else where
    path = str(Path(local).expanduser().resolve())
    return Location(pafs.LocalFileSystem(), path, path)
