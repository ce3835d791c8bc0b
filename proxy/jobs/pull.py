"""Pull mode: a GPU box behind NAT connects out to the proxy, leases screening jobs and posts signals back.

While an upload is screened, the pipeline's detector stage (`PullDetectors.screen`) writes a job (with the
bytes, bounded) to the database and waits for a result; workers long-poll `POST /_bucketguard/jobs/lease`,
fetch `GET /_bucketguard/jobs/{id}/body` and answer `POST /_bucketguard/jobs/{id}/result`. A job leased by a
worker that dies is leased again once its lease expires. Each lease carries a fresh random lease token; the
body and the result are accepted only with the token of the job's current lease, from the worker holding it,
and once (compare-and-set): a worker cannot decide a job it never leased, or one leased again to another,
and nothing is decided twice; a result that comes after the uploader stopped waiting is still stored, and the
next screening of the same bytes (a retry, or the deferred scan) uses it.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import secrets
import time
from collections.abc import Mapping
from typing import Any

from sqlalchemy import BigInteger, Column, Float, Integer, LargeBinary, String, Table, Text, and_, or_, select, update
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from inference.engine import ScreenResult
from proxy.state import Database, Migration, add_missing_columns, create_tables, metadata, now_text

MAX_JOB_BYTES = 64 * 1024 * 1024

inference_jobs = Table(
    "inference_jobs",
    metadata,
    Column("id", String(48), primary_key=True),
    Column("sha256", String(64), nullable=False, index=True),
    Column("content_type", String(255), nullable=False, default=""),
    Column("size", BigInteger, nullable=False),
    Column("body", LargeBinary, nullable=True),
    Column("state", String(16), nullable=False),  # queued, leased, done
    Column("lease_until", Float, nullable=False, default=0.0),
    Column("worker", String(255), nullable=False, default=""),
    Column("lease_token", String(64), nullable=False, default="", server_default=""),
    Column("attempts", Integer, nullable=False, default=0),
    Column("result_json", Text, nullable=True),
    Column("decided_by", String(255), nullable=False, default=""),
    Column("created_at", String(40), nullable=False),
    Column("decided_at", String(40), nullable=False, default=""),
)

MIGRATIONS = [Migration("jobs-0001", create_tables(inference_jobs)),
              Migration("jobs-0002", add_missing_columns(inference_jobs, "lease_token"))]
#: The header a worker sends its lease token in (body and result requests).
LEASE_HEADER = "x-bucketguard-lease"


class JobQueue:
    def __init__(self, db: Database, *, lease_s: float = 30.0) -> None:
        self._engine = db.engine
        self.lease_s = lease_s

    async def submit(self, data: bytes, content_type: str, sha256: str) -> str:
        job_id = secrets.token_hex(16)
        async with self._engine.begin() as conn:
            await conn.execute(inference_jobs.insert().values(
                id=job_id, sha256=sha256, content_type=content_type, size=len(data), body=data, state="queued",
                lease_until=0.0, worker="", attempts=0, created_at=now_text(), decided_at=""))
        return job_id

    async def result_for(self, job_id: str | None = None, sha256: str | None = None) -> dict[str, Any] | None:
        condition = inference_jobs.c.id == job_id if job_id else inference_jobs.c.sha256 == sha256
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(inference_jobs.c.result_json, inference_jobs.c.decided_by).where(
                and_(condition, inference_jobs.c.state == "done")).limit(1))).first()
        if row is None:
            return None
        result = json.loads(row.result_json)
        result["decided_by"] = f"worker:{row.decided_by}"
        return result

    async def lease(self, worker: str, limit: int) -> list[dict[str, Any]]:
        now = time.time()
        async with self._engine.connect() as conn:
            candidates = (await conn.execute(select(
                inference_jobs.c.id, inference_jobs.c.lease_until, inference_jobs.c.attempts,
                inference_jobs.c.content_type, inference_jobs.c.size, inference_jobs.c.sha256).where(or_(
                    inference_jobs.c.state == "queued",
                    and_(inference_jobs.c.state == "leased", inference_jobs.c.lease_until < now),
                )).order_by(inference_jobs.c.created_at).limit(limit))).mappings().all()
        taken = []
        for job in candidates:
            token = secrets.token_urlsafe(24)
            async with self._engine.begin() as conn:
                claimed = await conn.execute(update(inference_jobs).where(and_(
                    inference_jobs.c.id == job["id"], inference_jobs.c.lease_until == job["lease_until"],
                    inference_jobs.c.state != "done")).values(
                    state="leased", worker=worker, lease_token=token, lease_until=now + self.lease_s,
                    attempts=job["attempts"] + 1))
            if claimed.rowcount == 1:
                taken.append({"id": job["id"], "lease": token, "content_type": job["content_type"],
                              "size": job["size"], "sha256": job["sha256"], "lease_s": self.lease_s})
        return taken

    @staticmethod
    def _held(job_id: str, worker: str, token: str) -> Any:
        """The job's current lease is this worker's, with this token."""
        return and_(inference_jobs.c.id == job_id, inference_jobs.c.state == "leased",
                    inference_jobs.c.worker == worker, inference_jobs.c.lease_token == token,
                    inference_jobs.c.lease_token != "")

    async def body(self, job_id: str, worker: str, token: str) -> bytes | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(inference_jobs.c.body).where(self._held(job_id, worker, token)))).first()
        return None if row is None else bytes(row.body)

    async def complete(self, job_id: str, worker: str, token: str, result: Mapping[str, Any]) -> bool:
        """Record the result of the worker holding the job's current lease, once; anything else is refused."""
        async with self._engine.begin() as conn:
            done = await conn.execute(update(inference_jobs).where(self._held(job_id, worker, token)).values(
                state="done", result_json=json.dumps(dict(result)), decided_by=worker, decided_at=now_text(),
                body=None, lease_until=0.0, lease_token=""))
        return done.rowcount == 1

    async def rows(self) -> list[dict[str, Any]]:
        async with self._engine.connect() as conn:
            rows = (await conn.execute(select(inference_jobs.c.id, inference_jobs.c.state, inference_jobs.c.worker,
                                              inference_jobs.c.attempts, inference_jobs.c.decided_by))).mappings().all()
        return [dict(r) for r in rows]


class PullDetectors:
    """The detector stage in pull mode: same `screen()` as the in-process engine and the HTTP client."""

    def __init__(self, queue: JobQueue, *, poll_s: float = 0.05) -> None:
        self.queue = queue
        self.poll_s = poll_s

    async def screen(self, data: bytes, content_type: str | None = None) -> ScreenResult:
        import hashlib

        sha256 = hashlib.sha256(data).hexdigest()
        earlier = await self.queue.result_for(sha256=sha256)
        if earlier is not None:
            return ScreenResult.from_json(earlier)
        if len(data) > MAX_JOB_BYTES:
            raise RuntimeError(f"{len(data)} bytes is more than a pull-mode job may carry")
        job_id = await self.queue.submit(data, content_type or "", sha256)
        while True:  # the caller bounds the wait (scan timeout); the job stays queued if it gives up
            result = await self.queue.result_for(job_id=job_id)
            if result is not None:
                return ScreenResult.from_json(result)
            await asyncio.sleep(self.poll_s)


def job_routes(queue: JobQueue, worker_tokens: Mapping[str, str], *, max_wait_s: float = 25.0) -> list[Route]:
    tokens = {name: token.encode() for name, token in worker_tokens.items() if token}

    def worker_of(request: Request) -> str | None:
        header = request.headers.get("authorization", "")
        given = header[len("Bearer "):].encode() if header.startswith("Bearer ") else b""
        found = None
        for name, token in tokens.items():
            if hmac.compare_digest(given, token):
                found = name
        return found

    def denied() -> Response:
        return JSONResponse({"error": "a valid worker token is required"}, status_code=401)

    async def lease(request: Request) -> Response:
        worker = worker_of(request)
        if worker is None:
            return denied()
        try:
            wanted = json.loads(await request.body() or b"{}")
            limit = max(1, min(int(wanted.get("max", 8)), 64))
            wait_s = max(0.0, min(float(wanted.get("wait_s", max_wait_s)), max_wait_s))
        except (ValueError, TypeError, AttributeError):
            return JSONResponse({"error": "body must be JSON like {\"max\": 8, \"wait_s\": 20}"}, status_code=400)
        deadline = time.monotonic() + wait_s
        while True:
            jobs = await queue.lease(worker, limit)
            if jobs or time.monotonic() >= deadline:
                break
            if await request.is_disconnected():  # a worker gone mid-wait: stop polling for it (and let shutdown go)
                break
            await asyncio.sleep(0.1)
        return JSONResponse({"jobs": jobs}) if jobs else Response(status_code=204)

    async def body(request: Request) -> Response:
        worker = worker_of(request)
        if worker is None:
            return denied()
        data = await queue.body(request.path_params["job_id"], worker, request.headers.get(LEASE_HEADER, ""))
        if data is None:
            return JSONResponse({"error": "no such job under this worker's current lease"}, status_code=404)
        return Response(data, media_type="application/octet-stream")

    async def result(request: Request) -> Response:
        worker = worker_of(request)
        if worker is None:
            return denied()
        try:
            payload = json.loads(await request.body())
            ScreenResult.from_json(payload)
        except (ValueError, KeyError, TypeError, AttributeError):
            return JSONResponse({"error": "body must be a screen result (signals, packs, ...)"}, status_code=400)
        accepted = await queue.complete(request.path_params["job_id"], worker, request.headers.get(LEASE_HEADER, ""),
                                        payload)
        # 409 when this worker does not hold the job's current lease (never leased, leased again, decided)
        return JSONResponse({"accepted": accepted}, status_code=200 if accepted else 409)

    return [
        Route("/_bucketguard/jobs/lease", lease, methods=["POST"]),
        Route("/_bucketguard/jobs/{job_id}/body", body, methods=["GET"]),
        Route("/_bucketguard/jobs/{job_id}/result", result, methods=["POST"]),
    ]
