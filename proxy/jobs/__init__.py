"""Background work: deferred scans (``pending``), the pull-mode job queue (``pull``), backfill of an existing
bucket (``backfill``) and the janitor.

May import: ``proxy.screening``, ``proxy.evidence``, ``proxy.storage``, ``proxy.state``, ``proxy.config``.
Never ``proxy.front`` or ``proxy.commands``.
"""
