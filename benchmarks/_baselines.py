"""The clients the SDK is measured against, written the way a user would write them.

- ``raw``: bare aiohttp POST + GET pairs on ``CONCURRENCY`` worker tasks; no polling loop, no
  retries, no models. The machine's limit for this request pattern.
- ``naive``: the client a user writes from the service's page: ``asyncio.gather`` of one
  coroutine per job, each ``POST`` then ``while True: sleep(poll); GET``. It sleeps for
  ``Retry-After`` and tries again on a 429, which is the least a user adds.
- ``naive_httpx``: the same code on ``httpx.AsyncClient``, as most peer SDKs are built.

All three bound concurrent requests to ``CONCURRENCY`` (connector / pool limit), as the SDK's
``max_in_flight`` does.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable
from typing import Any

import aiohttp
import httpx
from _bench import AUDIO, CONCURRENCY, IMAGE, run_workers

BODY = json.dumps({"formState": {"image": IMAGE, "audio": AUDIO}}).encode()
FINAL = ("completed", "failed")


def _headers(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}


def aiohttp_session(limit: int = CONCURRENCY) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit),
        timeout=aiohttp.ClientTimeout(total=120.0),
    )


def httpx_client(limit: int = CONCURRENCY) -> httpx.AsyncClient:
    # pool=None: with the default 5 s pool timeout, a fan-out of thousands of coroutines on 64
    # connections fails with PoolTimeout before it is slow; a user would have to learn this.
    return httpx.AsyncClient(
        limits=httpx.Limits(max_connections=limit, max_keepalive_connections=limit),
        timeout=httpx.Timeout(120.0, pool=None),
    )


async def raw_pairs(base_url: str, api_key: str, n: int, stats: Counter[str]) -> None:
    """N POST + GET pairs, CONCURRENCY at a time: what the hardware and aiohttp allow."""
    headers = _headers(api_key)
    post_url = f"{base_url}/lipsync-image"
    async with aiohttp_session() as session:

        async def one(_: int) -> None:
            async with session.post(post_url, data=BODY, headers=headers) as resp:
                job_id = json.loads(await resp.read())["id"]
            async with session.get(f"{base_url}/jobs/{job_id}", headers=headers) as resp:
                json.loads(await resp.read())
            stats["requests"] += 2
            stats["done"] += 1

        await run_workers(n, CONCURRENCY, one)


async def naive_aiohttp(
    base_url: str,
    api_key: str,
    n: int,
    poll: float,
    stats: Counter[str],
    *,
    on_submitted: Callable[[], Any] | None = None,
    session: aiohttp.ClientSession | None = None,
) -> list[dict[str, Any]]:
    """``gather`` of per-job ``POST; while True: sleep; GET`` coroutines on aiohttp."""
    headers = _headers(api_key)
    post_url = f"{base_url}/lipsync-image"

    async def request(s: aiohttp.ClientSession, method: str, url: str) -> dict[str, Any]:
        while True:
            stats["requests"] += 1
            async with s.request(
                method, url, data=BODY if method == "POST" else None, headers=headers
            ) as resp:
                if resp.status == 429:
                    stats["429"] += 1
                    await asyncio.sleep(float(resp.headers.get("Retry-After", "1")))
                    continue
                resp.raise_for_status()
                data: dict[str, Any] = await resp.json()
                return data

    async def run_one(s: aiohttp.ClientSession) -> dict[str, Any]:
        job = await request(s, "POST", post_url)
        if on_submitted is not None:
            on_submitted()
        while True:
            await asyncio.sleep(poll)
            state = await request(s, "GET", f"{base_url}/jobs/{job['id']}")
            stats["reads"] += 1
            if state["status"] in FINAL:
                stats["done"] += 1
                return state

    if session is not None:
        return await asyncio.gather(*(run_one(session) for _ in range(n)))
    async with aiohttp_session() as s:
        return await asyncio.gather(*(run_one(s) for _ in range(n)))


async def naive_httpx(
    base_url: str,
    api_key: str,
    n: int,
    poll: float,
    stats: Counter[str],
    *,
    on_submitted: Callable[[], Any] | None = None,
    client: httpx.AsyncClient | None = None,
) -> list[dict[str, Any]]:
    """The same naive client on ``httpx.AsyncClient``."""
    headers = _headers(api_key)
    post_url = f"{base_url}/lipsync-image"

    async def request(c: httpx.AsyncClient, method: str, url: str) -> dict[str, Any]:
        while True:
            stats["requests"] += 1
            resp = await c.request(
                method, url, content=BODY if method == "POST" else None, headers=headers
            )
            if resp.status_code == 429:
                stats["429"] += 1
                await asyncio.sleep(float(resp.headers.get("Retry-After", "1")))
                continue
            resp.raise_for_status()
            data: dict[str, Any] = resp.json()
            return data

    async def run_one(c: httpx.AsyncClient) -> dict[str, Any]:
        job = await request(c, "POST", post_url)
        if on_submitted is not None:
            on_submitted()
        while True:
            await asyncio.sleep(poll)
            state = await request(c, "GET", f"{base_url}/jobs/{job['id']}")
            stats["reads"] += 1
            if state["status"] in FINAL:
                stats["done"] += 1
                return state

    if client is not None:
        return await asyncio.gather(*(run_one(client) for _ in range(n)))
    async with httpx_client() as c:
        return await asyncio.gather(*(run_one(c) for _ in range(n)))
