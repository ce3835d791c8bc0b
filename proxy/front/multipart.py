"""Multipart uploads in the database, so that any proxy replica can take any part or complete any upload."""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import BigInteger, Column, Integer, String, Table, Text, and_, delete, func, select, update
from sqlalchemy.exc import IntegrityError

from proxy.state import Database, Migration, create_tables, metadata, now_text

multipart_uploads = Table(
    "multipart_uploads",
    metadata,
    Column("upload_id", String(64), primary_key=True),
    Column("upstream_upload_id", String(1024), nullable=False),
    Column("bucket", String(255), nullable=False),
    Column("real_bucket", String(255), nullable=False),
    Column("key", Text, nullable=False),
    Column("staging_key", Text, nullable=False),
    Column("access_key", String(255), nullable=False),
    Column("content_type", String(255), nullable=False, default=""),
    Column("metadata_json", Text, nullable=False, default="{}"),
    Column("created_at", String(40), nullable=False),
    Column("state", String(16), nullable=False),  # open, completing, done, aborted
)

multipart_parts = Table(
    "multipart_parts",
    metadata,
    Column("upload_id", String(64), primary_key=True),
    Column("part_number", Integer, primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("etag", String(255), nullable=False),
    Column("md5", String(32), nullable=False),
    Column("updated_at", String(40), nullable=False),
)

MIGRATIONS = [Migration("multipart-0001", create_tables(multipart_uploads, multipart_parts))]


@dataclass(frozen=True)
class MultipartUpload:
    upload_id: str
    upstream_upload_id: str
    bucket: str
    real_bucket: str
    key: str
    staging_key: str
    access_key: str
    content_type: str
    metadata: dict[str, str]
    created_at: str
    state: str


@dataclass(frozen=True)
class PartRecord:
    part_number: int
    size: int
    etag: str


def new_upload_id() -> str:
    return secrets.token_urlsafe(24)


class MultipartState:
    def __init__(self, db: Database) -> None:
        self._engine = db.engine

    async def create(self, *, upload_id: str, upstream_upload_id: str, bucket: str, real_bucket: str, key: str,
                     staging_key: str, access_key: str, content_type: str, metadata: Mapping[str, str]) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(multipart_uploads.insert().values(
                upload_id=upload_id, upstream_upload_id=upstream_upload_id, bucket=bucket,
                real_bucket=real_bucket, key=key, staging_key=staging_key, access_key=access_key,
                content_type=content_type, metadata_json=json.dumps(dict(metadata)), created_at=now_text(),
                state="open"))

    async def get(self, upload_id: str) -> MultipartUpload | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(multipart_uploads).where(
                multipart_uploads.c.upload_id == upload_id))).mappings().first()
        return None if row is None else _upload_from_row(row)

    async def record_part(self, upload_id: str, part_number: int, size: int, etag: str, md5: str) -> None:
        """Record a part; a part sent again replaces the earlier one, as S3 does."""
        values = {"size": size, "etag": etag, "md5": md5, "updated_at": now_text()}
        async with self._engine.begin() as conn:
            result = await conn.execute(update(multipart_parts).where(and_(
                multipart_parts.c.upload_id == upload_id, multipart_parts.c.part_number == part_number,
            )).values(**values))
            if result.rowcount == 0:
                try:
                    async with conn.begin_nested():
                        await conn.execute(multipart_parts.insert().values(
                            upload_id=upload_id, part_number=part_number, **values))
                except IntegrityError:
                    await conn.execute(update(multipart_parts).where(and_(
                        multipart_parts.c.upload_id == upload_id, multipart_parts.c.part_number == part_number,
                    )).values(**values))

    async def parts(self, upload_id: str) -> dict[int, PartRecord]:
        async with self._engine.connect() as conn:
            rows = (await conn.execute(select(multipart_parts).where(
                multipart_parts.c.upload_id == upload_id))).mappings().all()
        return {r["part_number"]: PartRecord(r["part_number"], r["size"], r["etag"]) for r in rows}

    async def total_size(self, upload_id: str) -> int:
        async with self._engine.connect() as conn:
            value = (await conn.execute(select(func.coalesce(func.sum(multipart_parts.c.size), 0)).where(
                multipart_parts.c.upload_id == upload_id))).scalar_one()
        return int(value)

    async def transition(self, upload_id: str, from_states: tuple[str, ...], to_state: str) -> bool:
        """Compare-and-set of the upload's state: True for exactly one caller, across replicas."""
        async with self._engine.begin() as conn:
            result = await conn.execute(update(multipart_uploads).where(and_(
                multipart_uploads.c.upload_id == upload_id, multipart_uploads.c.state.in_(from_states),
            )).values(state=to_state))
        return result.rowcount == 1

    async def forget_parts(self, upload_id: str) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(delete(multipart_parts).where(multipart_parts.c.upload_id == upload_id))

    async def mark_completing(self, upload_id: str) -> bool:
        """Claim an open upload for completion; False when another request or replica got there first."""
        return await self.transition(upload_id, ("open",), "completing")

    async def mark_done(self, upload_id: str) -> bool:
        return await self.transition(upload_id, ("completing",), "done")

    async def mark_aborted(self, upload_id: str) -> bool:
        """Abort an upload nobody is completing; False once it is completing, done or already aborted."""
        return await self.transition(upload_id, ("open", "staged"), "aborted")

    async def stale(self, older_than: str, states: tuple[str, ...] = ("open",)) -> list[MultipartUpload]:
        """Uploads in `states` created before `older_than` (ISO text, as `now_text()` writes it)."""
        async with self._engine.connect() as conn:
            rows = (await conn.execute(select(multipart_uploads).where(and_(
                multipart_uploads.c.state.in_(states), multipart_uploads.c.created_at < older_than,
            )).order_by(multipart_uploads.c.created_at))).mappings().all()
        return [_upload_from_row(row) for row in rows]

    async def list_stale_uploads(self, older_than: timedelta,
                                 states: tuple[str, ...] = ("open",)) -> list[MultipartUpload]:
        """Uploads left in `states` for longer than `older_than`, for the cleanup job."""
        cutoff = (datetime.now(UTC) - older_than).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return await self.stale(cutoff, states)


def _upload_from_row(row: Mapping[str, object]) -> MultipartUpload:
    data = dict(row)
    data["metadata"] = json.loads(str(data.pop("metadata_json")))
    return MultipartUpload(**data)  # type: ignore[arg-type]
