"""What a restore covers: `--only mysql|redis|volumes|db:NAME|volume:NAME` against a manifest."""

from __future__ import annotations

from workers.errors import BackupError


def parse_only(only: str) -> list[str]:
    items = [i.strip() for i in only.split(",") if i.strip()]
    for item in items:
        kind, _, name = item.partition(":")
        if item in ("mysql", "redis", "volumes") or (kind in ("db", "volume") and name):
            continue
        raise BackupError(
            f"--only: cannot read {item!r} (use mysql, redis, volumes, db:NAME or volume:NAME)"
        )
    return items


def selected_artifacts(manifest: dict, only: list[str]) -> list[dict]:
    """The manifest's artifacts a restore replaces; an --only naming nothing is an error."""
    chosen = []
    for artifact in manifest["artifacts"]:
        kind = artifact["kind"]
        if kind == "mysql-index":
            continue
        source = artifact["source"]
        wanted = not only or any(
            item == {"mysql": "mysql", "redis": "redis", "volume": "volumes"}[kind]
            or item == f"{'db' if kind == 'mysql' else kind}:{source}"
            for item in only
        )
        if wanted:
            chosen.append(artifact)
    for item in only:
        kind, _, name = item.partition(":")
        if name and not any(a["source"] == name for a in chosen):
            have = ", ".join(
                sorted(
                    a["source"]
                    for a in manifest["artifacts"]
                    if a["kind"] == ("mysql" if kind == "db" else kind)
                )
            )
            raise BackupError(f"backup {manifest['id']} has no {item} (it has: {have or 'none'})")
    if not chosen:
        raise BackupError(f"backup {manifest['id']} holds nothing matching --only {','.join(only)}")
    return chosen


def kinds_of(artifacts: list[dict]) -> list[str]:
    kinds = {"mysql": "mysql", "redis": "redis", "volume": "volumes"}
    return [k for k in ("mysql", "redis", "volumes") if k in {kinds[a["kind"]] for a in artifacts}]
