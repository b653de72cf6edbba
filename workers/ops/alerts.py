"""Notifications through apprise: every event is logged, and sent to each URL of
XIEHE_NOTIFY_URLS (comma list, or XIEHE_NOTIFY_URLS_FILE; XIEHE_NOTIFY_URL(_FILE) is an
alias): mailto://, json:// and other webhooks, dingtalk://, wecombot://, and the rest.

A notification never fails what it reports on: delivery errors are retried per URL,
logged and swallowed.  A URL often embeds a token or a password: it is never logged
nor returned, and apprise's own log (which names URLs at debug level) is kept to itself.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import apprise

from workers.config import _secret
from workers.context import StepContext
from workers.ops import metrics
from workers.ops import settings as ops_settings
from workers.steps.runner import now_iso

log = logging.getLogger("xiehe.alerts")
logging.getLogger("apprise").propagate = False  # its debug lines carry whole URLs
HTTP_LOGGER = logging.getLogger("urllib3.connectionpool")  # logs request paths (tokens)
ATTEMPTS = 3
TITLE_FIELDS = ("event", "id")


def notify_urls(env: Mapping[str, str] | None = None) -> list[str]:
    """The configured apprise URLs, XIEHE_NOTIFY_URLS first, then the alias."""
    env = os.environ if env is None else env
    urls: list[str] = []
    for name in ("XIEHE_NOTIFY_URLS", "XIEHE_NOTIFY_URL"):
        raw = _secret(env, name) or ""
        urls += [u.strip() for u in re.split(r"[,\n]", raw) if u.strip() and u.strip() not in urls]
    return urls


def _secret_parts(url: str) -> list[str]:
    """Every piece of a URL that may be a token (host, user, password, path, query)."""
    rest = url.split("://", 1)[-1]
    parts = {p for p in re.split(r"[/:@?&=#,]+", rest) if len(p) >= 4}
    return sorted(parts | {url, rest}, key=len, reverse=True)


def scrub(text: str, urls: Sequence[str]) -> str:
    for url in urls:
        for part in _secret_parts(url):
            text = text.replace(part, "***")
    return text


def render(event: dict) -> tuple[str, str]:
    """(title, body): one line to read on a phone, then every field."""
    title = f"[xiehe-backup] {event.get('event', 'event')} {event.get('id', '')}".strip()
    title += f" on {event['host']}" if event.get("host") else ""
    lines = []
    for key, value in event.items():
        if value in (None, "", [], {}):
            continue
        shown = (
            value if isinstance(value, str | int | float) else json.dumps(value, ensure_ascii=False)
        )
        lines.append(f"{key}: {shown}")
    return title, "\n".join(lines)


@contextmanager
def _quiet(logger: logging.Logger) -> Iterator[None]:
    """Drop the logger's records while a notification is sent."""
    drop = logging.Filter(name="\0")  # matches no logger name: filters out every record
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


def _send(url: str, index: int, title: str, body: str, kind: str, backoff: float) -> bool:
    """Deliver to one URL with retries; another URL's success never resends to this one."""
    hub = apprise.Apprise()
    if not hub.add(url):
        log.warning("notification URL #%d is not a valid apprise URL: skipped", index)
        return False
    service = hub[0].service_name
    for attempt in range(1, ATTEMPTS + 1):
        with (
            _quiet(HTTP_LOGGER),
            apprise.LogCapture(level=logging.WARNING, fmt="%(message)s") as captured,
        ):
            try:
                if hub.notify(body=body, title=title, notify_type=kind):
                    return True
                error = ""
            except Exception as exc:  # noqa: BLE001 - a notifier must never raise
                error = f"{type(exc).__name__}: {exc}"
        reason = " ".join(f"{captured.getvalue()} {error}".split()) or "no reason given"
        log.warning(
            "notification #%d (%s) not delivered (attempt %d/%d): %s",
            index,
            service,
            attempt,
            ATTEMPTS,
            scrub(reason, [url]),
        )
        if attempt < ATTEMPTS:
            time.sleep(backoff * attempt)
    return False


# an event's status -> (log level, apprise's kind of notification); else INFO, success
_LEVELS = {
    "failed": (logging.ERROR, apprise.NotifyType.FAILURE),
    "warning": (logging.WARNING, apprise.NotifyType.WARNING),
}


def notify(event: dict, urls: Sequence[str] | None = None, backoff: float = 2.0) -> bool:
    """Log the event and send it to every URL (default: the configured ones).
    True when there was at least one URL and every one accepted it."""
    event = {"host": socket.gethostname(), "at": now_iso(), **event}
    level, kind = _LEVELS.get(event.get("status"), (logging.INFO, apprise.NotifyType.SUCCESS))
    log.log(
        level,
        "xiehe-backup event: %s",
        json.dumps(event, ensure_ascii=False),
    )
    urls = notify_urls() if urls is None else list(urls)
    title, body = render(event)
    results = [_send(url, i, title, body, kind, backoff) for i, url in enumerate(urls, 1)]
    return bool(results) and all(results)


def _published(run: dict) -> dict:
    return run.get("steps", {}).get("publish", {}).get("result") or {}


def run_event(run: dict, status: str) -> dict:
    return {
        "event": f"{run.get('type', 'backup')}.{status}",
        "status": status,
        "id": run["id"],
        "backup_id": run.get("backup_id"),  # a restore's source
        "reason": run.get("reason", ""),
        "kinds": run.get("kinds", []),
        "failed_step": run.get("failed_step"),
        "error": run.get("error"),
        "size_bytes": _published(run).get("size_bytes", 0),
        "warnings": _published(run).get("warnings"),
    }


def notify_result(run: dict, ctx: StepContext) -> dict:
    """A workflow's last step: refresh the metrics; notify when XIEHE_NOTIFY_ON_SUCCESS, or
    when the backup carries warnings (policy/emptied.py), whatever it says."""
    try:
        metrics.write(ctx.tree)
    except OSError as exc:
        log.warning("metrics not written: %s", exc)
    if _published(run).get("warnings"):
        return {"notified": notify(run_event(run, "warning"))}
    if not ops_settings.load().notify_on_success:
        return {"notified": False}
    return {"notified": notify(run_event(run, "succeeded"))}


def notify_failure(run: dict, ctx: StepContext) -> dict:
    """Called from a workflow's failure handler: exactly one notification per failed run."""
    try:
        metrics.write(ctx.tree)
    except OSError as exc:
        log.warning("metrics not written: %s", exc)
    return {"notified": notify(run_event(run, "failed"))}
