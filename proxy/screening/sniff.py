"""What the bytes say they are, from their first bytes (puremagic's signature tables), never the declared type.

The client's Content-Type is a hint at most: `Image/PNG`, `application/octet-stream`, `video/*` or a plain
lie must not change what is screened. A sniff is only the first word: bytes it does not recognise are still
offered to the decoders (:mod:`inference.media`), whose own probing has the last word (see
:meth:`proxy.screening.facts.Facts.media`).
"""

from __future__ import annotations

from typing import Literal

import puremagic

#: How much of the head the signatures need (puremagic looks at offsets up to a few KiB).
SNIFF_BYTES = 8192

Kind = Literal["image", "video", "unknown"]

#: Container formats that puremagic names without an image/ or video/ MIME type.
_VIDEO_EXTENSIONS = {".mkv", ".webm", ".mp4", ".m4v", ".mov", ".3gp", ".avi", ".flv", ".ogv"}


def sniff(head: bytes) -> Kind:
    """'image', 'video' or 'unknown' for the first SNIFF_BYTES of a body."""
    if not head:
        return "unknown"
    try:
        matches = puremagic.magic_string(head[:SNIFF_BYTES])
    except (puremagic.PureError, ValueError):
        return "unknown"
    for match in matches:
        mime = (match.mime_type or "").lower()
        if mime.startswith("image/"):
            return "image"
        if mime.startswith("video/") or mime == "application/x-matroska" or match.extension in _VIDEO_EXTENSIONS:
            return "video"
    return "unknown"
