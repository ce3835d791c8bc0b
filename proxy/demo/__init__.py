"""The demo: a real S3 server on loopback, the proxy in front of it, and uploads sent exactly as pict-rs
sends them (``pictrs_client``, also used by the tests and benchmarks as the pict-rs emulation).

May import anything of ``proxy``; nothing in the proxy's core imports ``demo``.
"""
