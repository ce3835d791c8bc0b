"""Differential conformance: the same S3 requests to the upstream alone and through the proxy, compared."""
