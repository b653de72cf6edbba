"""Notifications: every event is logged; it is also POSTed as JSON to XIEHE_NOTIFY_URL.

A notification never fails what it reports on: delivery errors are retried, logged and
swallowed.  The URL (it often embeds a token) is never logged nor returned.
"""

from __future__ import annotations

import json
import logging
import socket
import time
import urllib.error
import urllib.request

from workers.clock import now_iso
from workers.context import StepContext
from workers.ops import metrics
from workers.ops import settings as ops_settings

log = logging.getLogger("xiehe.alerts")
ATTEMPTS = 3
TIMEOUT = 10.0


def _post(url: str, body: bytes) -> None:
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
        response.read()


def notify(event: dict, url: str | None = None, backoff: float = 2.0) -> bool:
    """Log the event and deliver it; True if the webhook accepted it."""
    event = {"host": socket.gethostname(), "at": now_iso(), **event}
    level = logging.ERROR if event.get("status") == "failed" else logging.INFO
    log.log(level, "xiehe-backup event: %s", json.dumps(event, ensure_ascii=False))
    url = url if url is not None else ops_settings.load().notify_url
    if not url:
        return False
    body = json.dumps(event, ensure_ascii=False).encode()
    for attempt in range(1, ATTEMPTS + 1):
        try:
            _post(url, body)
            return True
        except (urllib.error.URLError, OSError, ValueError) as exc:
            # str(URLError) carries the reason, never the URL
            log.warning("notification not delivered (attempt %d/%d): %s", attempt, ATTEMPTS, exc)
        if attempt < ATTEMPTS:
            time.sleep(backoff * attempt)
    return False


def run_event(run: dict, status: str) -> dict:
    return {
        "event": f"{run.get('type', 'backup')}.{status}",
        "status": status,
        "id": run["id"],
        "reason": run.get("reason", ""),
        "kinds": run.get("kinds", []),
        "failed_step": run.get("failed_step"),
        "error": run.get("error"),
        "size_bytes": (run.get("steps", {}).get("publish", {}).get("result") or {}).get(
            "size_bytes", 0
        ),
    }


def notify_result(run: dict, ctx: StepContext) -> dict:
    """A workflow's last step: refresh the metrics; notify when XIEHE_NOTIFY_ON_SUCCESS."""
    ops = ops_settings.load()
    metrics.write(ctx.tree)
    event = run_event(run, "succeeded")
    sent = notify(event, ops.notify_url if ops.notify_on_success else "")
    return {"notified": sent}


def notify_failure(run: dict, ctx: StepContext) -> dict:
    """Called from a workflow's failure handler: exactly one notification per failed run."""
    try:
        metrics.write(ctx.tree)
    except OSError as exc:
        log.warning("metrics not written: %s", exc)
    return {"notified": notify(run_event(run, "failed"))}
