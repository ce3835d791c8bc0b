"""Setting up an instance: the start-up checks shared by `config check` and `serve`, and `bucketguard init`.

May import: ``proxy.config``, ``proxy.state``, ``proxy.storage``, ``proxy.evidence``, ``proxy.screening``,
``inference.packs``, and ``proxy.federation`` (its peers' keys and key file are checked at start-up).
"""
