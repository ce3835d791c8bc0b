"""Both generations of pict-rs, both addressings, through the proxy: the whole life of one Lemmy image."""

from __future__ import annotations

import hashlib
import os

import pytest

from proxy.demo.pictrs_client import PictrsClient, PictrsError
from tests.support.proxy import CLIENT_BUCKET, CLIENTS, PICTRS_KEY

MIB = 1024 * 1024


def client_for(proxy, generation: str, path_style: bool, **kwargs) -> PictrsClient:
    return PictrsClient(proxy.endpoint, CLIENT_BUCKET, PICTRS_KEY, CLIENTS[PICTRS_KEY], generation=generation,
                        path_style=path_style, **kwargs)


@pytest.mark.parametrize("path_style", [False, True], ids=["virtual-host", "path"])
@pytest.mark.parametrize("generation", ["presigned", "header"])
def test_one_lemmy_image(proxy, generation: str, path_style: bool) -> None:
    pictrs = client_for(proxy, generation, path_style)
    image = os.urandom(200_000)
    key = "01/9a/3b/c4/d5/e6/f7/08/19/2a/abcdefghijkl.webp"
    pictrs.health_check()
    assert pictrs.store(key, image, "image/webp") == image
    assert hashlib.sha256(proxy.upstream.get(proxy.real_bucket, key)).digest() == hashlib.sha256(image).digest()
    assert pictrs.head(key) == len(image)
    assert pictrs.get(key, "bytes=10-19") == image[10:20]
    assert pictrs.get(key, "bytes=199990-") == image[199990:]
    pictrs.delete(key)
    with pytest.raises(PictrsError) as info:
        pictrs.get(key)
    assert info.value.status == 404 and info.value.code == "NoSuchKey"


@pytest.mark.parametrize("generation", ["presigned", "header"])
def test_multipart_video(proxy, generation: str) -> None:
    pictrs = client_for(proxy, generation, path_style=False)
    video = os.urandom(20 * MIB + 4321)
    assert pictrs.store("clip.mp4", video, "video/mp4") == video
    assert proxy.upstream.get(proxy.real_bucket, "clip.mp4") == video
    assert proxy.upstream_keys() == ["clip.mp4"]


def test_multipart_empty_last_part_and_abort(proxy) -> None:
    pictrs = client_for(proxy, "presigned", path_style=True)
    data = os.urandom(16 * MIB)  # two full 8 MiB parts, then the empty last part pict-rs can send
    pictrs.put_multipart("a.webm", data, "video/webm", empty_last_part=True)
    assert proxy.upstream.get(proxy.real_bucket, "a.webm") == data
    upload_id = pictrs.create_multipart("b.webm", "video/webm")
    pictrs.upload_part("b.webm", upload_id, 2, os.urandom(1000))
    pictrs.abort_multipart("b.webm", upload_id)
    assert proxy.upstream_keys() == ["a.webm"]
    assert proxy.upstream.multipart_uploads(proxy.real_bucket) == []


def test_health_check_of_new_generation_lands_unscreened(proxy) -> None:
    client_for(proxy, "header", path_style=False).health_check()
    assert proxy.upstream.get(proxy.real_bucket, "health-check") == b""
