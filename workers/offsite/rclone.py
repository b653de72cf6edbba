"""The transport: rclone, one well-kept tool for SFTP and every S3-compatible store.

rclone is configured only through its environment (RCLONE_CONFIG_<REMOTE>_*), built here
for each call from the remote's settings: credentials never reach a command line, and
the user's own rclone configuration is never read.  Every call is bounded (connect and
idle timeouts); `retrying` repeats a failed transfer with a doubling back-off.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from workers.errors import BackupError
from workers.offsite.settings import OffsiteSettings, Remote

log = logging.getLogger("xiehe.offsite")
T = TypeVar("T")
HASH = "md5"  # the one checksum both SFTP (md5sum on the server) and S3 (ETag) report


class OffsiteError(BackupError):
    """A transfer to or from an off-site remote failed."""


def _root_missing(exc: OffsiteError) -> bool:
    """rclone's words for a remote directory (or bucket) nothing was written to yet."""
    return "directory not found" in str(exc) or "doesn't exist" in str(exc)


def _obscure(password: str) -> str:
    """rclone keeps SFTP passwords obscured; `rclone obscure -` reads it from stdin."""
    done = subprocess.run(
        ["rclone", "obscure", "-"], input=password.encode(), capture_output=True, check=True
    )
    return done.stdout.decode().strip()


def _config(remote: Remote) -> dict[str, str]:
    """rclone's settings of the remote, by option name."""
    if remote.kind == "sftp":
        conf = {"type": "sftp", "host": remote.host, "user": remote.user, "shell_type": "unix"}
        conf |= {"port": str(remote.port)} if remote.port else {}
        conf |= {
            k: remote.options[k] for k in ("key_file", "known_hosts_file") if k in remote.options
        }
        if "PASSWORD" in remote.secrets:
            conf["pass"] = _obscure(remote.secrets["PASSWORD"])
        return conf
    conf = {"type": "s3", "provider": remote.options["provider"]}
    conf |= {k: remote.options[k] for k in ("endpoint", "region") if k in remote.options}
    if "ACCESS_KEY_ID" in remote.secrets:
        conf["access_key_id"] = remote.secrets["ACCESS_KEY_ID"]
        conf["secret_access_key"] = remote.secrets.get("SECRET_ACCESS_KEY", "")
    else:
        conf["env_auth"] = "true"  # an instance role / the SDK's own environment
    return conf


class Rclone:
    """rclone bound to one remote; paths are relative to the remote's root."""

    def __init__(self, remote: Remote, settings: OffsiteSettings) -> None:
        self.remote = remote
        self.settings = settings
        self.section = f"xiehe_{remote.name}"
        where = f"{remote.host}/{remote.path}" if remote.kind == "s3" else remote.path or "."
        self.root = f"{self.section}:{where.rstrip('/')}"
        self._env: dict[str, str] | None = None

    def env(self) -> dict[str, str]:
        if self._env is None:
            prefix = f"RCLONE_CONFIG_{self.section.upper()}_"
            base = {k: os.environ[k] for k in ("PATH", "LANG", "TZ") if k in os.environ}
            self._env = base | {
                "HOME": tempfile.gettempdir(),
                "RCLONE_CONFIG": os.devnull,  # never the user's rclone.conf
                **{prefix + k.upper(): v for k, v in _config(self.remote).items()},
            }
        return self._env

    def path(self, rel: str = "") -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def run(self, *args: str, stdin: bytes | None = None, transfer: bool = False) -> bytes:
        s = self.settings
        flags = [
            "--log-level=ERROR",
            f"--contimeout={s.timeout_s}s",
            f"--timeout={s.timeout_s}s",
            "--retries=1",  # retries are ours (`retrying`), with back-off and a log line
            "--low-level-retries=2",
        ]
        if transfer and s.bwlimit:
            flags.append(f"--bwlimit={s.bwlimit}")
        done = subprocess.run(
            ["rclone", *args, *flags], input=stdin, capture_output=True, env=self.env()
        )
        if done.returncode != 0:
            lines = [ln for ln in done.stderr.decode(errors="replace").splitlines() if ln.strip()]
            tail = " | ".join(lines[-3:])[-600:] or f"exit status {done.returncode}"
            raise OffsiteError(f"remote {self.remote.name} ({self.remote.url}): {args[0]}: {tail}")
        return done.stdout

    def retrying(self, what: str, fn: Callable[[], T]) -> T:
        """fn(), again after 1x, 2x, 4x... the back-off while attempts are left."""
        attempts, wait = self.settings.retries, float(self.settings.backoff_s)
        for attempt in range(1, attempts + 1):
            try:
                return fn()
            except OffsiteError as exc:
                if attempt == attempts:
                    raise
                log.warning(
                    "%s failed (attempt %d/%d), again in %.0fs: %s",
                    what,
                    attempt,
                    attempts,
                    wait,
                    exc,
                )
                time.sleep(wait)
                wait *= 2
        raise AssertionError("unreachable")

    # What the rest of the package uses: each one rclone call, retried by the caller.
    def upload(self, local: Path, rel: str, every: bool = False) -> None:
        """A file, or a directory's files (those not already there alike; `every`: all of
        them, as a damaged remote copy may have the size and time of the good one)."""
        verb = "copy" if local.is_dir() else "copyto"
        flags = ["--ignore-times"] if every else []
        self.run(verb, str(local), self.path(rel), *flags, transfer=True)

    def download(self, rel: str, local: Path, directory: bool = False) -> None:
        self.run("copy" if directory else "copyto", self.path(rel), str(local), transfer=True)

    def download_named(self, rel: str, names: list[str], into: Path) -> None:
        """The files `names` of the remote directory `rel`, in one call."""
        listed = "".join(f"{name}\n" for name in names).encode()
        args = ("copy", self.path(rel), str(into), "--files-from-raw=-", "--no-traverse")
        self.run(*args, stdin=listed, transfer=True)

    def read(self, rel: str) -> bytes:
        return self.run("cat", self.path(rel))

    def download_matching(self, pattern: str, into: Path) -> None:
        """Every file of the root's top level matching `pattern` (rclone filter syntax);
        none when the root does not exist yet."""
        try:
            self.run("copy", self.root, str(into), "--max-depth=1", f"--include={pattern}")
        except OffsiteError as exc:
            if not _root_missing(exc):
                raise

    def listing(self, rels: list[str] | None = None, hashes: bool = True) -> dict[str, dict]:
        """{relative path: {size, md5}} of every file under the root, or of `rels` only
        ({} if none yet).  The md5 costs the remote a read of each file (`md5sum` on an
        SFTP server, one command per file): `hashes=False` gives names and sizes only."""
        args = ["lsjson", "-R", "--files-only"]
        args += ["--hash", f"--hash-type={HASH}"] if hashes else []
        listed = None if rels is None else "".join(f"{rel}\n" for rel in rels).encode()
        if listed is not None:
            args.append("--files-from-raw=-")
        try:
            raw = self.run(*args, self.root, stdin=listed)
        except OffsiteError as exc:
            if _root_missing(exc):
                return {}
            raise
        return {
            e["Path"]: {"size": e["Size"], HASH: (e.get("Hashes") or {}).get(HASH)}
            for e in json.loads(raw or b"[]")
        }

    def delete(self, rels: list[str]) -> None:
        if rels:
            listed = "".join(f"{r}\n" for r in rels).encode()
            self.run("delete", self.root, "--files-from-raw=-", stdin=listed)
