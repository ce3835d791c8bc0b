"""Evidence: the hash-chained log, quarantine items and their stores, export packages, and the review
actions (release, confirm) that change them.

May import: ``proxy.storage``, ``proxy.state``, ``proxy.config``. Never ``screening``, ``front`` or ``jobs``:
what they need from here they call; what this package needs from them is passed in.
"""
