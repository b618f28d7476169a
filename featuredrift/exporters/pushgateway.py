"""Push each evaluation to a Prometheus Pushgateway from a background thread.

Telemetry never hurts training: `submit` only appends to a bounded buffer and returns; a
worker thread pushes with a short timeout, retries with exponential backoff while the
gateway is down, and replays the buffer in order once it is back. When the buffer is full
the oldest report is dropped and counted.

Replay and the Pushgateway: the gateway keeps only the last push per group (job + run), and
pushes carry no timestamps, so replayed intermediate states are visible to Prometheus only
if a scrape happens to fall between two pushes. What replay guarantees is that the newest
state and the counters (`featuredrift_evaluations_total` counts every delivered report) reach
Prometheus; per-step history is the run store's job.
"""

from __future__ import annotations

import base64
import logging
import os
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable

from prometheus_client import delete_from_gateway, push_to_gateway

from featuredrift.exporters import http
from featuredrift.exporters.metrics import ExportStats, registry_for_report
from featuredrift.monitor.config import mask_url
from featuredrift.monitor.report import EvaluationReport

log = logging.getLogger(__name__)

ENV_USERNAME = "FEATUREDRIFT_PUSHGATEWAY_USERNAME"
ENV_PASSWORD = "FEATUREDRIFT_PUSHGATEWAY_PASSWORD"
ENV_CA_FILE = "FEATUREDRIFT_PUSHGATEWAY_CA_FILE"
ENV_CERT_FILE = "FEATUREDRIFT_PUSHGATEWAY_CERT_FILE"
ENV_KEY_FILE = "FEATUREDRIFT_PUSHGATEWAY_KEY_FILE"
ENV_INSECURE = "FEATUREDRIFT_PUSHGATEWAY_INSECURE"

TRUE_STRINGS = ("1", "true", "yes", "on")


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in TRUE_STRINGS


def make_http_handler(
    username: str | None = None,
    password: str | None = None,
    ca_file: str | None = None,
    cert_file: str | None = None,
    key_file: str | None = None,
    insecure: bool = False,
) -> Callable:
    """A `push_to_gateway` handler with optional basic auth, custom CA, client cert and no-verify."""
    context = None
    if ca_file or cert_file or insecure:
        context = ssl.create_default_context(cafile=ca_file)
        if cert_file:
            context.load_cert_chain(certfile=cert_file, keyfile=key_file)
        if insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
    authorization = None
    if username is not None and password is not None:
        authorization = "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()

    def handler(url: str, method: str, timeout: float | None, headers: list, data: bytes) -> Callable[[], None]:
        def handle() -> None:
            sent = dict(headers)
            if authorization:
                sent["Authorization"] = authorization
            # The whole request must end within `timeout`: a trickling gateway cannot hold the worker.
            http.request(url, method, data, sent, deadline_s=timeout or 3.0, ssl_context=context)

        return handle

    return handler


class PushgatewayExporter:
    """Pushes reports to `url` under grouping key job + run, off the caller's thread."""

    def __init__(
        self,
        url: str,
        job: str = "featuredrift",
        run: str = "default",
        timeout_s: float = 3.0,
        buffer_size: int = 256,
        *,
        delete_on_close: bool = True,
        username: str | None = None,
        password: str | None = None,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        insecure: bool | None = None,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
    ) -> None:
        if buffer_size < 1:
            raise ValueError(f"buffer_size: expected >= 1, found {buffer_size}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s: expected > 0, found {timeout_s}")
        self.url = url
        self.shown_url = mask_url(url)  # for logs: no credentials
        self.job = job
        self.run = run
        self.timeout_s = timeout_s
        self.delete_on_close = delete_on_close
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self._handler = make_http_handler(
            username=username if username is not None else os.environ.get(ENV_USERNAME),
            password=password if password is not None else os.environ.get(ENV_PASSWORD),
            ca_file=ca_file or os.environ.get(ENV_CA_FILE) or None,
            cert_file=cert_file or os.environ.get(ENV_CERT_FILE) or None,
            key_file=key_file or os.environ.get(ENV_KEY_FILE) or None,
            insecure=insecure if insecure is not None else _env_flag(ENV_INSECURE),
        )
        self._pending: deque[EvaluationReport] = deque()
        self._buffer_size = buffer_size
        self._condition = threading.Condition()
        self._closing = threading.Event()
        self._deadline = float("inf")
        self._keep_group = not delete_on_close
        self._delivered = 0
        self._failures = 0
        self._dropped = 0
        self._last_success: float | None = None
        self._failing_since: float | None = None
        self._worker = threading.Thread(target=self._run_worker, name=f"featuredrift-push-{run}", daemon=True)
        self._worker.start()

    # ---- the caller's side -------------------------------------------------------------

    @property
    def grouping_key(self) -> dict[str, str]:
        return {"run": self.run}

    @property
    def failures(self) -> int:
        return self._failures

    @property
    def dropped(self) -> int:
        return self._dropped

    @property
    def delivered(self) -> int:
        return self._delivered

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def last_success(self) -> float | None:
        return self._last_success

    def submit(self, report: EvaluationReport) -> None:
        """Queue a report for pushing; returns at once and never raises."""
        try:
            with self._condition:
                if self._closing.is_set():
                    log.warning("pushgateway exporter for run %r is closed; dropping step %s", self.run, report.step)
                    self._dropped += 1
                    return
                if len(self._pending) >= self._buffer_size:
                    self._pending.popleft()
                    self._dropped += 1
                self._pending.append(report)
                self._condition.notify()
        except Exception:  # noqa: BLE001 - telemetry must never raise into training
            log.exception("pushgateway exporter: could not queue a report")

    def close(self, timeout: float | None = None, keep_group: bool | None = None) -> None:
        """Flush what can be pushed within `timeout` (default: the push timeout), then delete
        the group unless kept. Returns within `timeout` even if the gateway hangs."""
        timeout = self.timeout_s if timeout is None else max(0.0, timeout)
        with self._condition:
            if keep_group is not None:
                self._keep_group = keep_group
            if not self._closing.is_set():
                self._deadline = time.monotonic() + timeout
                self._closing.set()
            self._condition.notify_all()
        self._worker.join(timeout=max(0.0, self._deadline - time.monotonic()))
        if self._worker.is_alive():
            log.warning("pushgateway exporter for run %r: close timed out; %d report(s) not pushed",
                        self.run, len(self._pending))

    def __enter__(self) -> PushgatewayExporter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---- the worker ----------------------------------------------------------------------

    def _remaining(self) -> float:
        return self._deadline - time.monotonic()

    def _push_timeout(self) -> float:
        return max(0.05, min(self.timeout_s, self._remaining()))

    def _run_worker(self) -> None:
        backoff = self.backoff_initial_s
        while True:
            with self._condition:
                while not self._pending and not self._closing.is_set():
                    self._condition.wait()
                if not self._pending or self._remaining() <= 0:
                    break
                report = self._pending[0]
            if self._push(report):
                with self._condition:
                    if self._pending and self._pending[0] is report:
                        self._pending.popleft()
                backoff = self.backoff_initial_s
            else:
                # Back off, during close too (the closing event is already set there, so waiting
                # on it would return at once and retry in a tight loop).
                if self._closing.is_set():
                    time.sleep(min(backoff, max(0.0, self._remaining())))
                else:
                    self._closing.wait(backoff)
                backoff = min(backoff * 2, self.backoff_max_s)
        if not self._keep_group and self._remaining() > 0:
            self._delete_group()

    def _push(self, report: EvaluationReport) -> bool:
        now = time.time()
        stats = ExportStats(self._delivered + 1, self._failures, self._dropped, now)
        try:
            registry = registry_for_report(report, self.run, stats)
            push_to_gateway(self.url, job=self.job, registry=registry, grouping_key=self.grouping_key,
                            timeout=self._push_timeout(), handler=self._handler)
        except Exception as error:  # noqa: BLE001 - any failure is counted, never raised
            self._failures += 1
            if self._failing_since is None:
                self._failing_since = now
                what = "answered with an error" if isinstance(error, http.HttpError) else "unreachable"
                log.warning("pushgateway %s %s (%s); buffering evaluations and retrying", self.shown_url, what, error)
            return False
        self._delivered += 1
        self._last_success = now
        if self._failing_since is not None:
            log.info("pushgateway %s is back after %.1fs; replaying %d buffered evaluation(s)",
                     self.shown_url, now - self._failing_since, len(self._pending))
            self._failing_since = None
        return True

    def _delete_group(self) -> None:
        try:
            delete_from_gateway(self.url, job=self.job, grouping_key=self.grouping_key,
                                timeout=self._push_timeout(), handler=self._handler)
        except Exception as error:  # noqa: BLE001
            self._failures += 1
            log.warning("pushgateway %s: could not delete group job=%s run=%s (%s)", self.shown_url, self.job, self.run, error)
