"""`bucketguard inference worker`: pull mode for a GPU box that nobody can connect to (a desktop behind NAT).

It connects out to the proxy, long-polls for jobs, runs them on its local engine (batched like the service)
and posts the signals back. Killing it loses nothing: its leased jobs go to another worker when the lease
ends.
"""

from __future__ import annotations

import asyncio
import logging

import httpx

from inference.engine import Engine

log = logging.getLogger("bucketguard.worker")


class PullWorker:
    def __init__(self, engine: Engine, proxy_url: str, token: str, *, batch: int = 8, wait_s: float = 20.0,
                 pause_s: float = 0.0) -> None:
        self.engine = engine
        self.proxy_url = proxy_url.rstrip("/")
        self.batch = batch
        self.wait_s = wait_s
        self.pause_s = pause_s
        self.client = httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"},
                                        timeout=httpx.Timeout(wait_s + 15, connect=10))
        self.done = 0

    async def run_once(self) -> int:
        response = await self.client.post(f"{self.proxy_url}/_bucketguard/jobs/lease",
                                          json={"max": self.batch, "wait_s": self.wait_s})
        if response.status_code == 204:
            return 0
        if response.status_code == 401:
            raise PermissionError("the proxy refused this worker's token")
        response.raise_for_status()
        jobs = response.json()["jobs"]
        await asyncio.gather(*(self._one(job) for job in jobs))
        return len(jobs)

    async def _one(self, job: dict) -> None:
        if self.pause_s:
            await asyncio.sleep(self.pause_s)
        lease = {"X-Bucketguard-Lease": job.get("lease", "")}  # proves this worker holds the current lease
        body = await self.client.get(f"{self.proxy_url}/_bucketguard/jobs/{job['id']}/body", headers=lease)
        if body.status_code != 200:
            log.warning("job %s: body not available (%s); skipped", job["id"], body.status_code)
            return
        result = await self.engine.screen(body.content, job.get("content_type") or None)
        posted = await self.client.post(f"{self.proxy_url}/_bucketguard/jobs/{job['id']}/result",
                                        json=result.to_json(), headers=lease)
        if posted.status_code not in (200, 409):
            posted.raise_for_status()
        self.done += 1

    async def run_forever(self) -> None:
        backoff = 1.0
        while True:
            try:
                await self.run_once()
                backoff = 1.0
            except PermissionError:
                raise
            except (httpx.HTTPError, OSError) as exc:
                log.warning("proxy unreachable (%s); retrying in %.0f s", type(exc).__name__, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 60.0)

    async def close(self) -> None:
        await self.client.aclose()
        await self.engine.close()
