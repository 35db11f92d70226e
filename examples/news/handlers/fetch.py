"""Generator of the fetch variant: download every configured feed URL into feeds/{source}.xml.

params: `urls` (a table of source name -> feed URL), optional `timeout` (seconds).
All feeds are fetched or the run fails: a fan-out result without a source would leave that
source's file behind as no longer produced.
"""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from http.client import HTTPException

from eventrunner_handlers.http import retry_after

from eventrunner import PermanentError, RetryLater

USER_AGENT = "eventrunner-news/0.1 (+https://github.com/eventrunner/eventrunner)"
_SOURCE = re.compile(r"^[A-Za-z0-9_-]+$")
MAX_BYTES = 10 * 1024 * 1024


def fetch(ctx) -> dict[str, bytes]:
    """{source: feed bytes} for every entry of params.urls."""
    urls = ctx.params.get("urls")
    if not isinstance(urls, dict) or not urls:
        raise PermanentError("fetch: params.urls must be a table of source name -> feed URL")
    timeout = float(ctx.params.get("timeout", 30))
    feeds: dict[str, bytes] = {}
    for source, url in sorted(urls.items()):
        if not _SOURCE.match(source) or not isinstance(url, str):
            raise PermanentError(
                f"fetch: params.urls.{source}: name must be [A-Za-z0-9_-]+ and URL text"
            )
        feeds[source] = download(source, url, timeout)
        ctx.log.info("fetch: %s: %d bytes", source, len(feeds[source]))
    return feeds


def download(source: str, url: str, timeout: float) -> bytes:
    """The body of one GET; RetryLater for 429, 5xx and network errors, PermanentError for 4xx."""
    request = urllib.request.Request(
        url,
        headers={
            "User-Agent": USER_AGENT,
            "Accept": "application/rss+xml, application/atom+xml, */*",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            data: bytes = resp.read(MAX_BYTES + 1)
    except urllib.error.HTTPError as exc:
        with exc:
            if exc.code == 429 or exc.code >= 500:
                after = retry_after(exc.headers.get("Retry-After") if exc.headers else None)
                raise RetryLater(f"fetch: {source}: HTTP {exc.code}", retry_after=after) from None
            raise PermanentError(f"fetch: {source}: HTTP {exc.code} from {url}") from None
    except (OSError, HTTPException) as exc:
        raise RetryLater(f"fetch: {source}: {url}: {exc}") from None
    except ValueError as exc:
        raise PermanentError(f"fetch: {source}: bad URL {url!r}: {exc}") from None
    if len(data) > MAX_BYTES:
        raise PermanentError(f"fetch: {source}: feed larger than {MAX_BYTES} bytes")
    if not data.strip():
        raise RetryLater(f"fetch: {source}: empty response")
    return data
