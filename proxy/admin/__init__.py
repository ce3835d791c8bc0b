"""The review page under ``/admin/``, behind the admin token.

May import: ``proxy.evidence``, ``proxy.screening``, ``proxy.storage``, ``proxy.state``, ``proxy.config``.
"""
