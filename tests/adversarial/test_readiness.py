"""/readyz tells the truth (issue 9, races and crashes): when the state database goes away, or the spool or
quarantine disk is full or unwritable, the proxy says it is not ready, and why, instead of answering
"ready" while every upload fails. Real proxies in front of moto; the database is the proxy's own SQLite file.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest
from botocore.exceptions import ClientError

from tests.support.proxy import CLIENT_BUCKET, RunningProxy


def ready(proxy: RunningProxy) -> tuple[int, str]:
    answer = httpx.get(f"{proxy.endpoint}/readyz", timeout=30)
    return answer.status_code, answer.text


def test_database_file_gone_then_back(proxy_factory) -> None:
    proxy = proxy_factory(subprocess=True)
    db = proxy.config_path.parent / "state.db"
    assert ready(proxy) == (200, "ready\n")
    moved = db.with_name("moved.db")
    db.rename(moved)
    status, text = ready(proxy)
    assert status == 503 and f"database: the SQLite file {db} is gone" in text, text
    moved.rename(db)
    assert ready(proxy) == (200, "ready\n")


def test_database_file_replaced_by_an_empty_one(proxy_factory) -> None:
    proxy = proxy_factory(subprocess=True)
    db = proxy.config_path.parent / "state.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    db.write_bytes(b"")
    status, text = ready(proxy)
    assert status == 503 and "database:" in text and "replaced" in text, text


def test_spool_folder_unwritable(proxy_factory, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    proxy = proxy_factory(limits=f'spool_dir = "{spool}"')
    assert ready(proxy)[0] == 200
    shutil.rmtree(spool)
    spool.write_text("not a folder")
    status, text = ready(proxy)
    assert status == 503 and f"spool: {spool} is not a folder" in text, text
    with pytest.raises(ClientError):
        proxy.client().put_object(Bucket=CLIENT_BUCKET, Key="spooled.bin", Body=os.urandom(2 * 1024 * 1024))
    assert proxy.upstream_keys() == [], "nothing lands while the spool is broken"


def test_quarantine_folder_unwritable(proxy_factory) -> None:
    proxy = proxy_factory()
    folder = proxy.config_path.parent / "quarantine"
    shutil.rmtree(folder, ignore_errors=True)
    folder.write_text("not a folder")
    status, text = ready(proxy)
    assert status == 503 and f"quarantine: {folder} is not a folder" in text, text


def test_disks_without_room_are_named(proxy_factory, tmp_path: Path) -> None:
    """The free-space floor is set above what any disk here has: both folders report a full disk."""
    proxy = proxy_factory(limits=f'spool_dir = "{tmp_path}"\nmin_free_disk_bytes = {2 ** 62}')
    status, text = ready(proxy)
    assert status == 503, text
    assert f"spool: disk full at {tmp_path}" in text
    assert "quarantine: disk full at" in text
    assert "database" not in text and "upstream" not in text
