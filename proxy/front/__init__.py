"""The S3 front: the ASGI app, verification and dispatch, pass-through reads, held-back writes, request
bodies, multipart state and the `/validate` endpoint.

May import: ``proxy.screening`` (the screen seam), ``proxy.storage``, ``proxy.s3``, and the top-level
``config``, ``state``, ``metrics``, ``logs``. Nothing imports ``front`` but ``app``, ``admin`` and ``commands``.
"""
