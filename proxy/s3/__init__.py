"""The S3 protocol, pure: addressing, SigV4 verification, aws-chunked bodies, XML bodies and S3 errors.

No I/O and no policy; imports nothing of the project, so it can be read, tested and fuzzed alone.
"""
