"""The one S3 error type, rendered as the XML document S3 clients parse."""

from __future__ import annotations

from collections.abc import Mapping
from xml.sax.saxutils import escape

#: HTTP status of each S3 error code this proxy answers with.
STATUS_BY_CODE: dict[str, int] = {
    "AccessDenied": 403,
    "AuthorizationHeaderMalformed": 400,
    "AuthorizationQueryParametersError": 400,
    "BadDigest": 400,
    "BucketAlreadyExists": 409,
    "BucketAlreadyOwnedByYou": 409,
    "BucketNotEmpty": 409,
    "NoSuchTagSet": 404,
    "NoSuchVersion": 404,
    "OperationAborted": 409,
    "EntityTooLarge": 400,
    "EntityTooSmall": 400,
    "ExpiredToken": 400,
    "IncompleteBody": 400,
    "InternalError": 500,
    "InvalidAccessKeyId": 403,
    "InvalidArgument": 400,
    "InvalidBucketName": 400,
    "InvalidDigest": 400,
    "InvalidPart": 400,
    "InvalidPartOrder": 400,
    "InvalidRange": 416,
    "InvalidRequest": 400,
    "InvalidToken": 400,
    "InvalidURI": 400,
    "KeyTooLongError": 400,
    "MalformedXML": 400,
    "MethodNotAllowed": 405,
    "MissingContentLength": 411,
    "NoSuchBucket": 404,
    "NoSuchKey": 404,
    "NoSuchUpload": 404,
    "NotImplemented": 501,
    "NotModified": 304,
    "PreconditionFailed": 412,
    "RequestTimeout": 400,
    "RequestTimeTooSkewed": 403,
    "ServiceUnavailable": 503,
    "SignatureDoesNotMatch": 403,
    "SlowDown": 503,
    "XAmzContentSHA256Mismatch": 400,
}

DEFAULT_MESSAGES: dict[str, str] = {
    "AccessDenied": "Access Denied",
    "InvalidAccessKeyId": "The AWS Access Key Id you provided does not exist in our records.",
    "SignatureDoesNotMatch": (
        "The request signature we calculated does not match the signature you provided. "
        "Check your key and signing method."
    ),
    "NoSuchKey": "The specified key does not exist.",
    "NoSuchBucket": "The specified bucket does not exist",
    "NoSuchUpload": (
        "The specified upload does not exist. The upload ID may be invalid, or the upload may have "
        "been aborted or completed."
    ),
    "InvalidPart": (
        "One or more of the specified parts could not be found. The part may not have been uploaded, "
        "or the specified entity tag may not match the part's entity tag."
    ),
    "InvalidPartOrder": "The list of parts was not in ascending order.",
    "EntityTooLarge": "Your proposed upload exceeds the maximum allowed size",
    "EntityTooSmall": "Your proposed upload is smaller than the minimum allowed object size.",
    "BadDigest": "The Content-MD5 you specified did not match what we received.",
    "XAmzContentSHA256Mismatch": "The provided 'x-amz-content-sha256' header does not match what was computed.",
    "SlowDown": "Please reduce your request rate.",
    "ServiceUnavailable": "The service is unavailable. Please retry.",
    "InternalError": "We encountered an internal error. Please try again.",
    "NotImplemented": "A header or query you provided implies functionality that is not implemented.",
    "RequestTimeTooSkewed": "The difference between the request time and the current time is too large.",
    "MalformedXML": "The XML you provided was not well-formed or did not validate against our published schema.",
    "IncompleteBody": "You did not provide the number of bytes specified by the Content-Length HTTP header.",
    "MissingContentLength": "You must provide the Content-Length HTTP header.",
    "InvalidRange": "The requested range is not satisfiable",
    "PreconditionFailed": "At least one of the pre-conditions you specified did not hold",
    "NotModified": "Not Modified",
    "MethodNotAllowed": "The specified method is not allowed against this resource.",
}


class S3Error(Exception):
    """An S3 protocol error: a code, a status from :data:`STATUS_BY_CODE`, and a message."""

    def __init__(
        self,
        code: str,
        message: str = "",
        *,
        status: int | None = None,
        resource: str = "",
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, str] | None = None,
    ) -> None:
        self.code = code
        self.message = message or DEFAULT_MESSAGES.get(code, code)
        self.status = status if status is not None else STATUS_BY_CODE.get(code, 400)
        self.resource = resource
        self.headers: dict[str, str] = dict(headers or {})
        if code in ("SlowDown", "ServiceUnavailable"):
            self.headers.setdefault("Retry-After", "1")
        self.extra: dict[str, str] = dict(extra or {})
        super().__init__(f"{code}: {self.message}")

    def to_xml(self, request_id: str = "", host_id: str = "") -> bytes:
        """The `<Error>` document; a 304 or a HEAD response carries no body, the caller drops it."""
        parts = [
            '<?xml version="1.0" encoding="UTF-8"?>\n<Error>',
            f"<Code>{escape(self.code)}</Code>",
            f"<Message>{escape(self.message)}</Message>",
        ]
        for name, value in self.extra.items():
            parts.append(f"<{name}>{escape(str(value))}</{name}>")
        if self.resource:
            parts.append(f"<Resource>{escape(self.resource)}</Resource>")
        parts.append(f"<RequestId>{escape(request_id)}</RequestId>")
        parts.append(f"<HostId>{escape(host_id)}</HostId>")
        parts.append("</Error>")
        return "".join(parts).encode("utf-8")
