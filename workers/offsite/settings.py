"""XIEHE_OFFSITE and the transfer knobs, read like workers/config.py.

    XIEHE_OFFSITE=dr=sftp://backup@dr-host:22/srv/xiehe?key_file=/run/secrets/dr_key,
                  oss=s3://bucket/prefix?endpoint=https://oss-cn-beijing.aliyuncs.com

Credentials never sit in a URL (a URL is logged and shown): they come from
XIEHE_OFFSITE_<NAME>_PASSWORD, _ACCESS_KEY_ID and _SECRET_ACCESS_KEY, each also as a
*_FILE secret.  A URL that carries one is refused, without echoing it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlparse

from workers.config import ConfigError, _int, _secret

_REMOTE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,30}$")
_BWLIMIT = re.compile(r"^\d+(\.\d+)?[KMG]?$", re.IGNORECASE)
# The URL options each kind of remote takes; anything else is a typo or a credential.
# prune=off: a write-once remote (S3 Object Lock, an append-only SFTP account) whose own
# rules expire old copies; this host never deletes there.
OPTIONS = {
    "sftp": frozenset({"key_file", "known_hosts_file", "prune"}),
    "s3": frozenset({"endpoint", "region", "provider", "prune"}),
}
# S3-compatible services rclone knows by name, recognised from the endpoint's host.
PROVIDERS = (
    ("aliyuncs.com", "Alibaba"),
    ("myqcloud.com", "TencentCOS"),
    ("amazonaws.com", "AWS"),
)


@dataclass(frozen=True)
class Remote:
    name: str
    kind: str  # sftp | s3
    url: str  # shown and logged: no credentials, no options
    host: str  # sftp host, or s3 bucket
    port: int | None
    user: str
    path: str  # below the host (sftp: absolute) or the bucket (s3)
    options: dict = field(default_factory=dict)
    secrets: dict = field(default_factory=dict, repr=False)  # password / access keys

    @property
    def prunes(self) -> bool:
        """False for a write-once remote: its own lifecycle rules expire old copies."""
        return self.options.get("prune", "on") == "on"


@dataclass(frozen=True)
class OffsiteSettings:
    remotes: tuple[Remote, ...]
    retries: int  # attempts per transfer before the backup is marked local only
    backoff_s: int  # first wait between attempts; doubles each time
    timeout_s: int  # a connection idle this long is dead
    bwlimit: str  # rclone's --bwlimit ("10M" bytes/s), "" for none

    def remote(self, name: str) -> Remote:
        for remote in self.remotes:
            if remote.name == name:
                return remote
        known = ", ".join(r.name for r in self.remotes) or "none (XIEHE_OFFSITE is not set)"
        raise ConfigError(f"unknown off-site remote {name!r}; configured: {known}")


def _remote(env: Mapping[str, str], item: str) -> Remote:
    name, sep, raw = item.partition("=")
    name = name.strip().lower()
    if not sep or not _REMOTE_NAME.match(name):
        raise ConfigError(
            f"XIEHE_OFFSITE: expected NAME=URL items (NAME: letters, digits, _), got {name[:20]!r}"
        )
    where = f"XIEHE_OFFSITE: remote {name}"
    parsed = urlparse(raw.strip())
    if parsed.password:
        upper = name.upper()
        raise ConfigError(
            f"{where}: a password in the URL would be logged; "
            f"use XIEHE_OFFSITE_{upper}_PASSWORD_FILE instead"
        )
    if parsed.scheme not in OPTIONS or not parsed.hostname:
        raise ConfigError(f"{where}: expected sftp://user@host[:port]/path or s3://bucket/prefix")
    options = dict(parse_qsl(parsed.query))
    unknown = sorted(set(options) - OPTIONS[parsed.scheme])
    if unknown:
        allowed = ", ".join(sorted(OPTIONS[parsed.scheme]))
        raise ConfigError(
            f"{where}: unknown option {unknown[0]!r} (allowed: {allowed}; "
            f"credentials go in XIEHE_OFFSITE_{name.upper()}_* variables)"
        )
    if options.get("prune", "on") not in ("on", "off"):
        raise ConfigError(f"{where}: prune must be on or off")
    try:
        port = parsed.port
    except ValueError:
        raise ConfigError(f"{where}: the port is not a number") from None
    path = parsed.path.rstrip("/")
    if parsed.scheme == "sftp" and not parsed.username:
        raise ConfigError(f"{where}: the URL needs a user (sftp://user@host/path)")
    if parsed.scheme == "s3":
        host_of_endpoint = urlparse(options.get("endpoint", "")).hostname or "amazonaws.com"
        default = next((p for suffix, p in PROVIDERS if host_of_endpoint.endswith(suffix)), "Other")
        options.setdefault("provider", default)
        path = path.lstrip("/")
    prefix = f"XIEHE_OFFSITE_{name.upper()}_"
    secrets = {
        key: value
        for key in ("PASSWORD", "ACCESS_KEY_ID", "SECRET_ACCESS_KEY")
        if (value := _secret(env, prefix + key))
    }
    shown_port = f":{port}" if port else ""
    shown_user = f"{parsed.username}@" if parsed.username else ""
    return Remote(
        name=name,
        kind=parsed.scheme,
        url=f"{parsed.scheme}://{shown_user}{parsed.hostname}{shown_port}{parsed.path}",
        host=parsed.hostname,
        port=port,
        user=parsed.username or "",
        path=path,
        options=options,
        secrets=secrets,
    )


def load(env: Mapping[str, str] | None = None) -> OffsiteSettings:
    env = os.environ if env is None else env
    items = [p.strip() for p in env.get("XIEHE_OFFSITE", "").split(",") if p.strip()]
    remotes = tuple(_remote(env, item) for item in items)
    names = [r.name for r in remotes]
    if len(set(names)) != len(names):
        raise ConfigError("XIEHE_OFFSITE: two remotes have the same name")
    bwlimit = env.get("XIEHE_OFFSITE_BWLIMIT", "").strip()
    if bwlimit and not _BWLIMIT.match(bwlimit):
        raise ConfigError(f"XIEHE_OFFSITE_BWLIMIT: expected bytes/s like 10M, got {bwlimit!r}")
    return OffsiteSettings(
        remotes=remotes,
        retries=_int(env, "XIEHE_OFFSITE_RETRIES", 3, minimum=1),
        backoff_s=_int(env, "XIEHE_OFFSITE_BACKOFF_S", 30),
        timeout_s=_int(env, "XIEHE_OFFSITE_TIMEOUT_S", 60, minimum=1),
        bwlimit=bwlimit,
    )
