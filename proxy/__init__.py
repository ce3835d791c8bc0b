"""bucketguard's proxy: everything that speaks S3, decides, and keeps evidence.

Packages, and which way imports may point (never back, never sideways beyond this list):

- ``s3``        the S3 protocol, pure: imports nothing of the project.
- ``storage``   bytes in transit (the spool) and the real bucket (the upstream client); imports ``s3``, ``config``.
- ``front``     the ASGI app and the S3 operations; imports ``screening``, ``storage``, ``s3`` and the top level.
- ``screening`` the verdict; imports ``evidence``, ``storage``, ``state``.
- ``evidence``  the hash-chained log and the quarantine; imports ``storage``, ``state``.
- ``jobs``      background work (deferred scans, pull mode, backfill, janitor); imports ``screening`` and below.
- ``admin``     the review page; imports ``evidence``, ``front``-level types and below.
- ``demo``      the demo and the pict-rs emulation client it drives.
- ``commands``  the CLI: parse, call, print.

Top level: ``config`` (the one loader), ``state`` (the database), ``metrics``, ``logs``, ``app`` (wiring) and
``cli`` (the command dispatcher).
"""
