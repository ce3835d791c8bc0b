"""Multipart uploads in the database, so that any proxy replica can take any part or complete any upload."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Integer,
    String,
    Table,
    Text,
    and_,
    delete,
    func,
    inspect,
    or_,
    select,
    update,
)
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
    Column("state", String(16), nullable=False),  # open, staged, completing, done, aborted
    #: While `completing`: when the completer's lease runs out (it renews it while it screens); after
    #: that a retried Complete, an Abort or the janitor may take the upload over.
    Column("lease_until", String(40), nullable=False, server_default=""),
    #: Once `done`: the landed object's ETag, so that a repeated Complete answers as S3 does.
    Column("final_etag", String(255), nullable=False, server_default=""),
    #: What CreateMultipartUpload asked of the object beyond its metadata (ACL, tags, storage class...), as
    #: botocore parameters: the landed object gets them too.
    Column("settings_json", Text, nullable=False, server_default="{}"),
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



def _add_columns(*names: str) -> Callable[[Connection], None]:
    """Add columns of multipart_uploads (as the Table defines them) that an older database lacks."""

    def apply(conn: Connection) -> None:
        present = {c["name"] for c in inspect(conn).get_columns("multipart_uploads")}
        for name in names:
            if name not in present:
                column = multipart_uploads.c[name]
                kind = column.type.compile(dialect=conn.dialect)
                default = str(column.server_default.arg)  # type: ignore[union-attr]
                conn.exec_driver_sql(f"ALTER TABLE multipart_uploads ADD COLUMN {name} {kind} NOT NULL "
                                     f"DEFAULT '{default}'")

    return apply


MIGRATIONS = [Migration("multipart-0001", create_tables(multipart_uploads, multipart_parts)),
              Migration("multipart-0002", _add_columns("lease_until", "final_etag")),
              Migration("multipart-0003", _add_columns("settings_json"))]
#: Non-final states: each can be recovered (Complete retried, Abort, or the janitor).
LIVE_STATES = ("open", "staged", "completing")


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
    lease_until: str = ""
    final_etag: str = ""
    settings: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PartRecord:
    part_number: int
    size: int
    etag: str
    updated_at: str = ""


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_upload_id() -> str:
    return secrets.token_urlsafe(24)


class MultipartState:
    def __init__(self, db: Database) -> None:
        self._engine = db.engine

    async def create(self, *, upload_id: str, upstream_upload_id: str, bucket: str, real_bucket: str, key: str,
                     staging_key: str, access_key: str, content_type: str, metadata: Mapping[str, str],
                     settings: Mapping[str, str] | None = None) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(multipart_uploads.insert().values(
                upload_id=upload_id, upstream_upload_id=upstream_upload_id, bucket=bucket,
                real_bucket=real_bucket, key=key, staging_key=staging_key, access_key=access_key,
                content_type=content_type, metadata_json=json.dumps(dict(metadata)), created_at=now_text(),
                state="open", settings_json=json.dumps(dict(settings or {}))))

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
        return {r["part_number"]: PartRecord(r["part_number"], r["size"], r["etag"], r["updated_at"]) for r in rows}

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

    async def claim_completion(self, upload_id: str, lease_s: float) -> str | None:
        """Take the upload for completion: from open or staged, or from `completing` whose lease ran out.

        Returns the state it was taken from ("open", "staged" or "completing"), None when another request or
        replica holds it (or it is final). Exactly one caller wins, across replicas.
        """
        now = datetime.now(UTC)
        lease = _stamp(now + timedelta(seconds=lease_s))
        c = multipart_uploads.c
        for from_state in ("open", "staged", "completing"):
            condition = c.state == from_state
            if from_state == "completing":
                condition = and_(condition, c.lease_until < _stamp(now))
            async with self._engine.begin() as conn:
                result = await conn.execute(update(multipart_uploads).where(and_(
                    c.upload_id == upload_id, condition)).values(state="completing", lease_until=lease))
            if result.rowcount == 1:
                return from_state
        return None

    async def renew_lease(self, upload_id: str, lease_s: float) -> None:
        """The completer's heartbeat while it screens."""
        lease = _stamp(datetime.now(UTC) + timedelta(seconds=lease_s))
        async with self._engine.begin() as conn:
            await conn.execute(update(multipart_uploads).where(and_(
                multipart_uploads.c.upload_id == upload_id, multipart_uploads.c.state == "completing",
            )).values(lease_until=lease))

    async def finish(self, upload_id: str, etag: str) -> bool:
        """completing -> done, keeping the landed ETag for a repeated Complete."""
        async with self._engine.begin() as conn:
            result = await conn.execute(update(multipart_uploads).where(and_(
                multipart_uploads.c.upload_id == upload_id, multipart_uploads.c.state == "completing",
            )).values(state="done", final_etag=etag, lease_until=""))
        return result.rowcount == 1

    async def claim_abort(self, upload_id: str) -> str | None:
        """Abort from any non-final state (`completing` only once its lease ran out); the state it left."""
        now = _stamp(datetime.now(UTC))
        c = multipart_uploads.c
        for from_state in LIVE_STATES:
            condition = c.state == from_state
            if from_state == "completing":
                condition = and_(condition, c.lease_until < now)
            async with self._engine.begin() as conn:
                result = await conn.execute(update(multipart_uploads).where(and_(
                    c.upload_id == upload_id, condition)).values(state="aborted", lease_until=""))
            if result.rowcount == 1:
                return from_state
        return None

    async def live_uploads(self, bucket: str, *, prefix: str = "", key_marker: str = "", upload_id_marker: str = "",
                           limit: int = 1000) -> list[MultipartUpload]:
        """A client bucket's uploads not yet completed or aborted, in (key, upload id) order, after the markers."""
        c = multipart_uploads.c
        conditions = [c.bucket == bucket, c.state.in_(LIVE_STATES)]
        if prefix:
            conditions.append(func.substr(c.key, 1, len(prefix)) == prefix)
        if key_marker:
            after = c.key > key_marker
            if upload_id_marker:
                after = or_(after, and_(c.key == key_marker, c.upload_id > upload_id_marker))
            conditions.append(after)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(select(multipart_uploads).where(and_(*conditions)).order_by(
                c.key, c.upload_id).limit(limit))).mappings().all()
        return [_upload_from_row(row) for row in rows]

    async def real_buckets(self) -> set[str]:
        """Every real bucket an upload was ever staged in (the janitor's round in pass-through mode)."""
        async with self._engine.connect() as conn:
            rows = (await conn.execute(select(multipart_uploads.c.real_bucket).distinct())).all()
        return {row[0] for row in rows}

    async def landing_keys(self, real_bucket: str) -> tuple[set[str], set[str]]:
        """(client keys the proxy has landed or is landing uploads on, those with an upload still live): an
        upstream multipart upload on a key of the first set but not the second is a landing left behind."""
        c = multipart_uploads.c
        async with self._engine.connect() as conn:
            rows = (await conn.execute(select(c.key, c.state).where(c.real_bucket == real_bucket))).all()
        return {row[0] for row in rows}, {row[0] for row in rows if row[1] in LIVE_STATES}

    async def staging_keys_in_use(self, real_bucket: str) -> set[str]:
        async with self._engine.connect() as conn:
            rows = (await conn.execute(select(multipart_uploads.c.staging_key).where(and_(
                multipart_uploads.c.real_bucket == real_bucket,
                multipart_uploads.c.state.in_(LIVE_STATES))))).all()
        return {row[0] for row in rows}

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
        cutoff = _stamp(datetime.now(UTC) - older_than)
        return await self.stale(cutoff, states)


def _upload_from_row(row: Mapping[str, object]) -> MultipartUpload:
    data = dict(row)
    data["metadata"] = json.loads(str(data.pop("metadata_json")))
    data["settings"] = json.loads(str(data.pop("settings_json", "") or "{}"))
    return MultipartUpload(**data)  # type: ignore[arg-type]
