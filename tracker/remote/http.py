"""The upstream grid API (BitScale Grid API shape) over httpx: the only module that speaks HTTP (the Upstream
interface of upstream.py).

Every request first waits for a shared rate-limit slot. 429 moves the shared slot past Retry-After and retries;
GETs are retried on 5xx, timeouts and connection errors with bounded, jittered backoff. A POST creates a run
that costs credits, so it is retried only when the upstream cannot have acted on it (429, 503, or the
connection never opened); a POST whose answer was lost raises UpstreamOutcomeUnknown instead of resubmitting.
Every failure is an UpstreamError with the HTTP status and a short body excerpt; the API key never appears."""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import random
import time
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

import anyio
import httpx

from ..errors import InvalidInput, UpstreamError, UpstreamOutcomeUnknown
from ..limits import ID_CHARS, MAX_RETRY_AFTER_S, UPSTREAM_EXCERPT_CHARS
from .upstream import RUN_STATUSES, Answer, RunRequest, Slot

log = logging.getLogger(__name__)


class Limiter(Protocol):
    async def acquire(self) -> Any: ...  # returns a ticket for on_time()
    def on_time(self, ticket: Any) -> bool: ...  # still within the slot the ticket was granted for
    async def defer(self, seconds: float) -> None: ...
    async def queue_s(self) -> float: ...


class _Unlimited:
    """The slot of a client without a shared limiter: always on time."""


def check_base_url(base_url: str) -> str:
    """Only http(s) URLs with a host; the URL itself is not echoed (it may carry credentials)."""
    if not isinstance(base_url, str) or not base_url.strip():
        raise InvalidInput("BITSCALE_API_BASE must be an http:// or https:// URL (it is empty)")
    parts = urlsplit(base_url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput(
            f"BITSCALE_API_BASE must be an http:// or https:// URL with a host (got scheme {parts.scheme or 'none'!r})"
        )
    return base_url.strip().rstrip("/")


def retry_after_seconds(value: str | None, default: float = 1.0, date: str | None = None) -> float:
    """Retry-After as delta-seconds or an HTTP date; capped so a bad header cannot stall us for hours. A date is
    measured from the response's own Date header when it has one, not from our clock: a host whose clock is
    behind would otherwise make every process on the database wait (the wait is shared)."""
    if not value:
        return default
    try:
        seconds = float(value)
    except ValueError:
        try:
            until = email.utils.parsedate_to_datetime(value).timestamp()
        except (TypeError, ValueError):
            return default
        try:
            sent = email.utils.parsedate_to_datetime(date).timestamp() if date else time.time()
        except (TypeError, ValueError):
            sent = time.time()
        seconds = until - sent
    return min(MAX_RETRY_AFTER_S, max(0.0, seconds))


class HttpUpstream:
    """The Upstream over HTTP: POST /grids/{grid_id}/run, GET /run/status/{request_id}, and the reads GET /workspace,
    GET /grids and GET /grids/{grid_id}. Create it inside the event loop that uses it; close with
    `await client.aclose()`."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        limiter: Limiter | None = None,
        *,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 30.0,
        sync_read_timeout_s: float = 150.0,  # the upstream holds a sync POST up to 120 s
        max_attempts: int = 5,
        max_rate_limited: int = 20,
        backoff_base_s: float = 0.25,
        backoff_cap_s: float = 8.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = check_base_url(base_url)
        self._key = api_key or ""
        self._limiter = limiter
        self._timeout = httpx.Timeout(read_timeout_s, connect=connect_timeout_s)
        self._sync_timeout = httpx.Timeout(sync_read_timeout_s, connect=connect_timeout_s)
        self._max_attempts = max(1, max_attempts)
        self._max_rate_limited = max(0, max_rate_limited)
        self._backoff_base_s = backoff_base_s
        self._backoff_cap_s = backoff_cap_s
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self.requests_sent = 0

    # -- the two endpoints ----------------------------------------------------------------------------------

    async def reserve(self) -> Slot:
        # The client is built and warmed before taking a slot: the first request otherwise spends tens of ms
        # creating it and importing anyio's backend after its slot, and a late request crowds the next ones into
        # one second.
        self._require_key()
        self._http()
        await anyio.sleep(0)
        return await self._limiter.acquire() if self._limiter is not None else _Unlimited()

    def on_time(self, slot: Slot) -> bool:
        return self._limiter is None or isinstance(slot, _Unlimited) or self._limiter.on_time(slot)

    async def submit_run(self, request: RunRequest, slot: Slot | None = None) -> Answer:
        body: dict[str, Any] = {"mode": request.mode, "inputs": request.inputs}
        if request.output_columns is not None:
            body["output_columns"] = request.output_columns
        if request.source_id is not None:
            body["source_id"] = request.source_id
        path = f"/grids/{quote(request.grid_id, safe='')}/run"
        answer = await self._request("POST", path, body, idempotent=False, sync=request.mode == "sync", slot=slot)
        if answer is None:
            raise UpstreamError("upstream has no such grid_id (HTTP 404)", status_code=404)
        status = answer.get("status")
        if status not in RUN_STATUSES:
            raise UpstreamOutcomeUnknown(
                f"upstream answered the run submission without a known status: {self._excerpt(json.dumps(answer))}",
                status_code=200,
            )
        request_id = answer.get("request_id")
        if status == "running" and not (
            isinstance(request_id, str) and 0 < len(request_id) <= ID_CHARS and request_id.isprintable()
        ):
            raise UpstreamOutcomeUnknown("upstream accepted the run but sent no usable request_id", status_code=200)
        return answer

    async def run_status(self, request_id: str) -> Answer | None:
        answer = await self._request("GET", f"/run/status/{quote(request_id, safe='')}", None, idempotent=True)
        if answer is not None and answer.get("status") not in RUN_STATUSES:
            raise UpstreamError(
                f"upstream status answer has no known status: {self._excerpt(json.dumps(answer))}", status_code=200
            )
        return answer

    async def workspace(self) -> Answer:
        return self._found(await self._request("GET", "/workspace", None, idempotent=True), "GET /workspace")

    async def list_grids(self, search: str | None, page: int, limit: int) -> Answer:
        params: dict[str, Any] = {"page": page, "limit": limit}
        if search is not None:
            params["search"] = search
        # The query stays out of `what` (and so out of every error text): the search is the caller's text.
        return self._found(await self._request("GET", "/grids", None, idempotent=True, params=params), "GET /grids")

    async def grid(self, grid_id: str) -> Answer | None:
        return await self._request("GET", f"/grids/{quote(grid_id, safe='')}", None, idempotent=True)

    async def queue_s(self) -> float:
        return 0.0 if self._limiter is None else await self._limiter.queue_s()

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # -- one request, with rate limit and retries -----------------------------------------------------------

    async def _request(
        self,
        method: str,
        path: str,
        body: Any,
        idempotent: bool,
        sync: bool = False,
        slot: Slot | None = None,
        params: dict[str, Any] | None = None,
    ) -> Answer | None:
        self._require_key()
        what = f"{method} {path}"
        failures = 0
        rate_limited = 0
        http = self._http()
        while True:
            if slot is None:
                await self.reserve()
            slot = None  # the caller's slot covers the first attempt only
            try:
                self.requests_sent += 1
                response = await http.request(
                    method, self.base_url + path, json=body, params=params,
                    timeout=self._sync_timeout if sync else self._timeout,
                )
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                # The request never left: safe to retry even a POST.
                failures += 1
                if failures >= self._max_attempts:
                    raise UpstreamError(f"upstream unreachable for {what}: {type(exc).__name__}") from None
                await self._backoff(failures, what, type(exc).__name__)
                continue
            except httpx.HTTPError as exc:
                if not idempotent:
                    raise UpstreamOutcomeUnknown(
                        f"no answer from upstream for {what} ({type(exc).__name__}); the run may exist upstream, "
                        "so it was not resubmitted"
                    ) from None
                failures += 1
                if failures >= self._max_attempts:
                    raise UpstreamError(f"upstream failed {what} {failures} times: {type(exc).__name__}") from None
                await self._backoff(failures, what, type(exc).__name__)
                continue
            log.debug("upstream %s -> HTTP %s", what, response.status_code)
            code = response.status_code
            if code == 429:
                rate_limited += 1
                wait = retry_after_seconds(response.headers.get("retry-after"), date=response.headers.get("date"))
                if rate_limited > self._max_rate_limited:
                    raise self._error(what, response, "still rate limited after retries")
                log.info("upstream 429 on %s: everyone waits %.2fs", what, wait)
                if self._limiter is not None:
                    await self._limiter.defer(wait)
                else:
                    await asyncio.sleep(wait)
                continue
            if code == 404:
                return None
            if code >= 500 and (idempotent or code == 503):
                failures += 1
                if failures >= self._max_attempts:
                    raise self._error(what, response, f"failed {failures} times")
                await self._backoff(failures, what, f"HTTP {code}")
                continue
            if code >= 400:
                raise self._error(what, response)
            try:
                answer = response.json()
            except ValueError:
                answer = None
            if not isinstance(answer, dict):
                error_type = UpstreamError if idempotent else UpstreamOutcomeUnknown
                raise error_type(
                    f"upstream answered {what} with something other than a JSON object: "
                    f"{self._excerpt(response.text)}",
                    status_code=code,
                    body_excerpt=self._excerpt(response.text),
                )
            return answer

    @staticmethod
    def _found(answer: Answer | None, what: str) -> Answer:
        """An endpoint that always exists answered 404: the base URL is wrong, not the argument."""
        if answer is None:
            raise UpstreamError(f"upstream answered {what} with HTTP 404: check BITSCALE_API_BASE", status_code=404)
        return answer

    def _require_key(self) -> None:
        if not self._key:
            raise UpstreamError("BITSCALE_API_KEY is not set: tracker cannot call the upstream grid API")

    async def _backoff(self, failures: int, what: str, reason: str) -> None:
        ceiling = min(self._backoff_cap_s, self._backoff_base_s * 2 ** (failures - 1))
        delay = ceiling / 2 + random.uniform(0, ceiling / 2)
        log.info("upstream %s failed (%s); retry %d in %.2fs", what, reason, failures, delay)
        await asyncio.sleep(delay)

    def _error(self, what: str, response: httpx.Response, note: str = "") -> UpstreamError:
        excerpt = self._excerpt(response.text)
        detail = f" ({note})" if note else ""
        return UpstreamError(
            f"upstream answered {what} with HTTP {response.status_code}{detail}: {excerpt or '(empty body)'}",
            status_code=response.status_code,
            body_excerpt=excerpt,
        )

    def _excerpt(self, text: str) -> str:
        """One line, bounded, and never the key even if the upstream echoes it."""
        line = "".join(ch for ch in " ".join(text.split()) if ch.isprintable())  # no NUL or terminal escapes
        if self._key:
            line = line.replace(self._key, "***")
        return line[:UPSTREAM_EXCERPT_CHARS] + ("..." if len(line) > UPSTREAM_EXCERPT_CHARS else "")

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                headers={"X-API-KEY": self._key, "Accept": "application/json"},
                transport=self._transport,
                follow_redirects=False,
            )
        return self._client
