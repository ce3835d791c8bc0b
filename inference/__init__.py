"""Everything that looks at pixels, and nothing of S3 or policy: decoding within a budget (``media``), model packs
and ONNX Runtime sessions (``packs``, ``runtime``), detectors, batching, the in-process engine, the inference
service and its client, the pull-mode worker, and the pack builders (``export``).

Imports nothing of ``proxy`` but the CLI's error type, where it registers its commands.
"""
