"""The verdict: what an upload is (``upload``), the ordered steps that decide it (``pipeline``, ``steps``),
hashing, hash lists, the built-in test image, the verdict cache and the policy.

May import: ``proxy.evidence`` (to record catches), ``proxy.storage``, ``proxy.state``, ``proxy.config`` and
``inference`` (the detector front). Never ``proxy.front``, ``proxy.jobs`` or ``proxy.commands``.
"""
