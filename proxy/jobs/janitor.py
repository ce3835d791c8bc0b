"""The janitor: aborts multipart uploads nobody finished and deletes orphaned staging objects.

Every `limits.janitor_interval_s` it aborts uploads older than `limits.stale_upload_age_s` in any non-final
state (one still held by a live completer is left alone: its abort is refused), then deletes staging objects
and upstream multipart uploads under the staging prefix that are that old and belong to no live upload (a
proxy killed between the verdict and the delete leaves such orphans). Staging bytes are unscreened: they
must not stay in the bucket for ever. On a versioned bucket a staging key is listed with ListObjectVersions and
removed version by version, delete markers included: a plain DELETE there would only hide the bytes, and a key
already hidden that way (no current object, so ListObjectsV2 never shows it) still holds them. Where the
upstream refuses to list versions, the sweep falls back to the current objects.

The multipart state, the abort and the staging prefix are handed in by the app (``jobs`` never imports
``front``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from proxy.s3.errors import S3Error
from proxy.storage.upstream import Upstream
from proxy.storage.versions import Version, delete_versions, refused, version_pages

log = logging.getLogger("bucketguard.janitor")

#: Upload states the janitor may abort (the front's non-final states).
LIVE_STATES = ("open", "staged", "completing")
#: Listing pages (1,000 entries each) one round reads per bucket; the rest waits for the next round.
MAX_SWEEP_PAGES = 100


class UploadStore(Protocol):
    """What the janitor needs of the multipart state."""

    async def list_stale_uploads(self, older_than: timedelta, states: tuple[str, ...] = ...) -> list[Any]: ...

    async def staging_keys_in_use(self, real_bucket: str) -> set[str]: ...

    async def real_buckets(self) -> set[str]: ...

    async def landing_keys(self, real_bucket: str) -> tuple[set[str], set[str]]: ...


@dataclass
class JanitorRound:
    """What one round did."""

    aborted: int = 0
    orphans_deleted: int = 0
    upstream_uploads_aborted: int = 0


class Janitor:
    def __init__(self, uploads: UploadStore, upstream: Upstream, abort: Callable[[Any], Awaitable[None]], *,
                 staging_prefix: str, served_buckets: Iterable[str], interval_s: float, age_s: float) -> None:
        self.uploads = uploads
        self.upstream = upstream
        self.abort = abort
        self.staging_prefix = staging_prefix
        self.served_buckets = set(served_buckets)
        self.interval_s = interval_s
        self.age = timedelta(seconds=age_s)
        self._task: asyncio.Task[None] | None = None
        #: When this janitor first saw each unowned staging object or upstream upload. Upstream dates alone
        #: are not trusted (some servers report a fixed Initiated date), and an upload is created upstream a
        #: moment before its row: nothing is removed before this process has seen it unowned for `age`.
        self._first_seen: dict[tuple[str, str, str], datetime] = {}
        self._versions_refused: set[str] = set()  # buckets whose versions the upstream would not list

    async def run_once(self) -> JanitorRound:
        done = JanitorRound()
        for upload in await self.uploads.list_stale_uploads(self.age, LIVE_STATES):
            try:
                await self.abort(upload)
                done.aborted += 1
            except S3Error as error:  # finished meanwhile, or a live completer holds it
                log.info("janitor left upload %s: %s", upload.upload_id, error.code)
        cutoff = datetime.now(UTC) - self.age
        for bucket in sorted(self.served_buckets | await self.uploads.real_buckets()):
            try:
                await self._sweep(bucket, cutoff, done)
            except S3Error as error:
                log.warning("janitor could not sweep %s: %s %s", bucket, error.code, error.message)
        if done.aborted or done.orphans_deleted or done.upstream_uploads_aborted:
            log.info("janitor round", extra={"fields": vars(done)})
        return done

    def _unowned_long_enough(self, ident: tuple[str, str, str], upstream_date: datetime, cutoff: datetime,
                             seen: set[tuple[str, str, str]]) -> bool:
        seen.add(ident)
        first = self._first_seen.setdefault(ident, datetime.now(UTC))
        return upstream_date < cutoff and first < cutoff

    async def _staging_versions(self, bucket: str) -> dict[str, list[Version]]:
        """Every version and delete marker under the staging prefix, by key (current objects only where the
        upstream will not list versions)."""
        by_key: dict[str, list[Version]] = {}
        if bucket not in self._versions_refused:
            try:
                async for page in version_pages(self.upstream, bucket, self.staging_prefix, max_pages=MAX_SWEEP_PAGES):
                    for version in page:
                        by_key.setdefault(version.key, []).append(version)
                return by_key
            except S3Error as error:
                if not refused(error):  # no s3:ListBucketVersions, or no versioning: current objects only
                    raise
                log.warning("janitor cannot list object versions in %s (%s): sweeping current objects only; "
                            "on a versioned bucket deleted staging bytes stay as old versions", bucket, error.code)
                self._versions_refused.add(bucket)
                by_key.clear()
        token = ""
        for _ in range(MAX_SWEEP_PAGES):
            page = await self.upstream.list_objects_v2(bucket, prefix=self.staging_prefix, continuation_token=token)
            for item in page.objects:
                by_key[item["Key"]] = [Version(item["Key"], "", item["LastModified"])]
            if not page.is_truncated or not page.next_token:
                break
            token = page.next_token
        return by_key

    async def _sweep(self, bucket: str, cutoff: datetime, done: JanitorRound) -> None:
        staged = await self._staging_versions(bucket)
        every_upload = await self.upstream.list_multipart_uploads(bucket, "")
        uploads = [u for u in every_upload if u["Key"].startswith(self.staging_prefix)]
        in_use = await self.uploads.staging_keys_in_use(bucket)  # after the listings: rows precede objects
        landed, live = await self.uploads.landing_keys(bucket)
        # A landing (the multipart copy onto the client's key) cut off by a crash leaves an upstream upload
        # on a key the proxy landed for; clients never create upstream uploads outside the staging prefix.
        leftovers = [u for u in every_upload if not u["Key"].startswith(self.staging_prefix)
                     and u["Key"] in landed and u["Key"] not in live]
        seen: set[tuple[str, str, str]] = set()
        for key, versions in staged.items():
            newest = max(v.last_modified for v in versions)
            if key not in in_use and self._unowned_long_enough((bucket, key, ""), newest, cutoff, seen):
                await delete_versions(self.upstream, bucket, versions)
                done.orphans_deleted += 1
        for item in [*uploads, *leftovers]:
            ident = (bucket, item["Key"], item["UploadId"])
            if item["Key"] not in in_use and self._unowned_long_enough(ident, item["Initiated"], cutoff, seen):
                with contextlib.suppress(S3Error):
                    await self.upstream.abort_multipart_upload(bucket, item["Key"], item["UploadId"])
                    done.upstream_uploads_aborted += 1
        for ident in [i for i in self._first_seen if i[0] == bucket and i not in seen]:
            del self._first_seen[ident]  # gone or owned again: forget it

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            try:
                await self.run_once()
            except Exception:  # a round that fails (database or upstream away) is retried next interval
                log.exception("janitor round failed")
            await asyncio.sleep(self.interval_s)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
