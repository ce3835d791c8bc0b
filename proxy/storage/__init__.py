"""Bytes: request bodies held in memory or spooled to disk, and the upstream client for the real bucket.

May import: ``proxy.s3`` and ``proxy.config``. Used by every package that moves object bytes.
"""
