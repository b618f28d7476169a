"""Upload the packaged dashboards to a Grafana instance through grafana-client.

Idempotent: dashboards keep their uids and are posted with `overwrite=True`, the folder is
found by uid or title before it is created, so pushing twice leaves Grafana as pushing once.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import NamedTuple

from featuredrift.dashboards.spec import DASHBOARD_DIR


class GrafanaPushError(RuntimeError):
    """Grafana unreachable, token rejected, or an upload refused; the message says which."""


class PushedDashboard(NamedTuple):
    uid: str
    title: str
    folder_uid: str
    url: str | None


def load_dashboards(directory: Path = DASHBOARD_DIR) -> list[dict]:
    """The packaged dashboard JSON files, checked for the fields an upload needs."""
    paths = sorted(directory.glob("*.json"))
    if not paths:
        raise GrafanaPushError(f"no dashboards: expected *.json files in {directory}, found none")
    dashboards = []
    for path in paths:
        try:
            dashboard = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise GrafanaPushError(f"dashboard {path}: not valid JSON ({exc})") from exc
        for key in ("uid", "title", "panels"):
            if key not in dashboard:
                raise GrafanaPushError(f"dashboard {path}: expected a '{key}' field, found keys {sorted(dashboard)}")
        dashboards.append(dashboard)
    return dashboards


def folder_uid_for(title: str) -> str:
    """A stable folder uid derived from its title (Grafana uids: ≤ 40 chars of [A-Za-z0-9_-])."""
    return re.sub(r"[^A-Za-z0-9_-]+", "-", title).strip("-").lower()[:40] or "featuredrift"


def push_dashboards(
    url: str,
    token: str | None,
    folder: str = "featuredrift",
    timeout_s: float = 10.0,
    dashboards: list[dict] | None = None,
) -> list[PushedDashboard]:
    """Create `folder` if missing and upload every dashboard into it (overwrite=True)."""
    from featuredrift.extras import require_extra

    require_extra("grafana", "featuredrift grafana push")
    from grafana_client import GrafanaApi
    from grafana_client.client import GrafanaException, GrafanaUnauthorizedError

    dashboards = dashboards if dashboards is not None else load_dashboards()
    api = GrafanaApi.from_url(url, credential=token or None, timeout=timeout_s)
    step = "listing folders"
    try:
        folder_uid = _ensure_folder(api, folder)
        pushed = []
        for dashboard in dashboards:
            step = f"uploading dashboard {dashboard['uid']!r}"
            body = {
                "dashboard": {**dashboard, "id": None},
                "folderUid": folder_uid,
                "overwrite": True,
                "message": "featuredrift grafana push",
            }
            answer = api.dashboard.update_dashboard(body) or {}
            pushed.append(PushedDashboard(dashboard["uid"], dashboard["title"], folder_uid, answer.get("url")))
        return pushed
    except GrafanaUnauthorizedError as exc:
        raise GrafanaPushError(
            f"Grafana at {url} rejected the token (HTTP 401) while {step}: expected a valid service-account "
            "token in --token or GRAFANA_TOKEN"
        ) from exc
    except GrafanaException as exc:
        if exc.status_code == 403:
            raise GrafanaPushError(
                f"Grafana at {url} refused {step} (HTTP 403): the token needs the Editor role "
                "(folders:create, dashboards:write)"
            ) from exc
        if exc.status_code == 0:
            raise GrafanaPushError(f"cannot reach Grafana at {url} while {step}: {exc.message}") from exc
        raise GrafanaPushError(f"Grafana at {url} failed {step}: HTTP {exc.status_code} {exc.message}") from exc
    except OSError as exc:  # connection refused, DNS failure, TLS errors (niquests' errors are OSErrors)
        raise GrafanaPushError(f"cannot reach Grafana at {url} while {step}: {exc}") from exc


def _ensure_folder(api, title: str) -> str:
    wanted_uid = folder_uid_for(title)
    for existing in api.folder.get_all_folders() or []:
        if existing.get("uid") == wanted_uid or existing.get("title") == title:
            return existing["uid"]
    created = api.folder.create_folder(title, uid=wanted_uid)
    return created.get("uid", wanted_uid)
