"""Local-filesystem storage provider (also a shared POSIX mount)."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import uuid

from aperio_assets.errors import LocationNotFound, StorageError
from aperio_assets.storage.base import FileInfo, StorageProvider, in_slice

# Temp files are written next to their target so the final link/rename stays on one filesystem;
# listings hide them, and a crashed writer's leftovers are never taken for real files.
TEMP_PREFIX = ".aperio-tmp-"


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class LocalStorage(StorageProvider):
    scheme = "file"

    def join(self, base: str, *parts: str) -> str:
        return os.path.join(base, *(p.strip("/") for p in parts if p))

    def describe(self, location: str | None = None) -> str:
        return f"local disk ({location})" if location else "local disk"

    def list(
        self,
        prefix: str,
        *,
        recursive: bool = False,
        after: str | None = None,
        upto: str | None = None,
        expect: int | None = None,
    ) -> list[FileInfo]:
        self.counters.add("LIST")
        entries: list[FileInfo] = []
        if recursive:
            for directory, dirnames, filenames in os.walk(prefix):
                # (a folder whose paths all sort outside the slice is not walked: they all begin
                # with "<folder>/" and sort before "<folder>0")
                dirnames[:] = sorted(
                    name
                    for name in dirnames
                    if (upto is None or os.path.join(directory, name) + "/" <= upto)
                    and (after is None or os.path.join(directory, name) + "0" > after)
                )
                for name in filenames:
                    path = os.path.join(directory, name)
                    if name.startswith(TEMP_PREFIX) or not in_slice(path, after, upto):
                        continue
                    info = self._stat(path)
                    if info is not None:
                        entries.append(info)
        else:
            try:
                with os.scandir(prefix) as it:
                    for entry in it:
                        if entry.name.startswith(TEMP_PREFIX):
                            continue
                        try:
                            st = entry.stat()
                        except FileNotFoundError:
                            continue  # removed while we listed
                        entries.append(
                            FileInfo(entry.path, 0 if entry.is_dir() else st.st_size, st.st_mtime, None, entry.is_dir())
                        )
            except (FileNotFoundError, NotADirectoryError):
                return []
        entries.sort(key=lambda e: e.path)
        return entries

    @staticmethod
    def _stat(path: str) -> FileInfo | None:
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        return FileInfo(path, st.st_size, st.st_mtime, None, os.path.isdir(path))

    def info(self, path: str) -> FileInfo | None:
        self.counters.add("HEAD")
        return self._stat(path)

    def read_bytes(self, path: str) -> bytes:
        self.counters.add("GET")
        with open(path, "rb") as f:
            return f.read()

    def read_range(self, path: str, start: int, length: int) -> bytes:
        self.counters.add("GET")
        with open(path, "rb") as f:
            f.seek(start)
            return f.read(length)

    def _write_temp(self, path: str, data: bytes) -> str:
        directory = os.path.dirname(path) or "."
        os.makedirs(directory, exist_ok=True)
        temp = os.path.join(directory, f"{TEMP_PREFIX}{uuid.uuid4().hex}")
        with open(temp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return temp

    def write_bytes(self, path: str, data: bytes) -> None:
        self.counters.add("PUT")
        temp = self._write_temp(path, data)
        try:
            os.replace(temp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise
        _fsync_dir(os.path.dirname(path) or ".")

    def create_if_absent(self, path: str, data: bytes) -> bool:
        self.counters.add("PUT")
        if os.path.lexists(path):
            return False  # cheap early answer; the link below is what decides
        temp = self._write_temp(path, data)
        try:
            # link() fails if the name exists, atomically, and the file appears whole.
            os.link(temp, path)
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise StorageError(
                    f"cannot create {path}: this filesystem does not support hard links, "
                    "which aperio needs for create-if-absent"
                ) from exc
            raise
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
        _fsync_dir(os.path.dirname(path) or ".")
        return True

    def delete(self, path: str) -> None:
        self.counters.add("DELETE")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

    def move(self, source: str, target: str) -> None:
        self.counters.add("PUT")
        os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
        try:
            os.replace(source, target)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            shutil.copy2(source, target)
            os.unlink(source)

    def download(self, path: str, local_path: str) -> None:
        self.counters.add("GET")
        shutil.copyfile(path, local_path)

    def upload(self, local_path: str, path: str) -> None:
        self.counters.add("PUT")
        directory = os.path.dirname(path) or "."
        os.makedirs(directory, exist_ok=True)
        temp = os.path.join(directory, f"{TEMP_PREFIX}{uuid.uuid4().hex}")
        try:
            shutil.copyfile(local_path, temp)
            with open(temp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(temp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
        _fsync_dir(directory)

    def local_path(self, path: str) -> str | None:
        return path

    def check(self, location: str) -> None:
        if not os.path.isdir(location):
            raise LocationNotFound(f"directory {location} does not exist")
