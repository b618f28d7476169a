"""Alertmanager-compatible webhook delivery for the in-process engine.

The payload follows Alertmanager's webhook format (version "4"), so any receiver written for
Alertmanager (Slack bridges, incident tools, a small HTTP service) accepts it unchanged.
Delivery has a short timeout and never raises: alerts must not hurt training.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from featuredrift.alerts.engine import FiredAlert

logger = logging.getLogger(__name__)
ZERO_TIME = "0001-01-01T00:00:00Z"  # Alertmanager's endsAt for alerts still firing


def rfc3339(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).isoformat().replace("+00:00", "Z")


def fingerprint(labels: dict[str, str]) -> str:
    text = "\xff".join(f"{k}\xff{v}" for k, v in sorted(labels.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _common(dicts: Sequence[dict[str, str]]) -> dict[str, str]:
    if not dicts:
        return {}
    common = dict(dicts[0])
    for other in dicts[1:]:
        common = {k: v for k, v in common.items() if other.get(k) == v}
    return common


def alertmanager_payload(
    alerts: Sequence[FiredAlert], receiver: str = "featuredrift", external_url: str = ""
) -> dict:
    """Alertmanager webhook body for a batch of alert transitions (firing or resolved)."""
    items = [
        {
            "status": alert.status,
            "labels": dict(alert.labels),
            "annotations": dict(alert.annotations),
            "startsAt": rfc3339(alert.starts_at),
            "endsAt": rfc3339(alert.ends_at) if alert.ends_at is not None else ZERO_TIME,
            "generatorURL": "",
            "fingerprint": fingerprint(alert.labels),
        }
        for alert in alerts
    ]
    group_labels = {k: v for k, v in _common([a.labels for a in alerts]).items() if k == "run"}
    group_key = "{}:{" + ",".join(f'{k}="{v}"' for k, v in sorted(group_labels.items())) + "}"
    return {
        "version": "4",
        "groupKey": group_key,
        "truncatedAlerts": 0,
        "status": "firing" if any(a.status == "firing" for a in alerts) else "resolved",
        "receiver": receiver,
        "groupLabels": group_labels,
        "commonLabels": _common([a.labels for a in alerts]),
        "commonAnnotations": _common([a.annotations for a in alerts]),
        "externalURL": external_url,
        "alerts": items,
    }


def post_json(url: str, payload: dict, timeout_s: float = 2.0) -> bool:
    """POST JSON within a deadline for the whole request (a trickling receiver cannot hold it);
    True on a 2xx answer. Logs (with the URL's secret parts masked) and returns False on any
    failure, never raises."""
    from featuredrift.exporters import http
    from featuredrift.monitor.config import mask_url

    body = json.dumps(payload).encode()
    try:
        http.request(url, "POST", body, {"Content-Type": "application/json"}, deadline_s=timeout_s)
    except http.HttpError as exc:
        logger.warning("alert webhook %s answered HTTP %s", mask_url(url), exc.status)
        return False
    except Exception as exc:  # any transport failure must stay out of training
        logger.warning("alert webhook %s unreachable: %s", mask_url(url), type(exc).__name__)
        return False
    return True


class WebhookAction:
    """Engine action: POST every batch of transitions to `url`; counts failures."""

    def __init__(self, url: str, timeout_s: float = 2.0, receiver: str = "featuredrift") -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.receiver = receiver
        self.deliveries = 0
        self.failures = 0

    def __call__(self, alerts: Sequence[FiredAlert]) -> None:
        if not alerts:
            return
        if post_json(self.url, alertmanager_payload(alerts, self.receiver), self.timeout_s):
            self.deliveries += 1
        else:
            self.failures += 1
