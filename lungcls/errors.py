"""The base of lungcls's own errors, and which failures are worth retrying.

The CLI turns a `LungclsError` into a message and an exit status without importing every
stage (and its heavy libraries) up front; the flows retry only what `is_transient` admits.
"""

from __future__ import annotations

import errno

# OSError numbers that say "the network or the storage service hiccuped", not "this input
# is wrong" (ENOENT, EACCES, ENOSPC... are not here: retrying them cannot help).
_TRANSIENT_ERRNOS = {
    errno.ECONNREFUSED,
    errno.ECONNRESET,
    errno.ECONNABORTED,
    errno.ETIMEDOUT,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    errno.ENETDOWN,
    errno.EPIPE,
    errno.EAGAIN,
}
# Exception class names of the storage clients' network failures (botocore, aiohttp,
# urllib3), matched by name so that this module imports none of them.
_TRANSIENT_NAMES = {
    "EndpointConnectionError",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "ConnectionClosedError",
    "ClientConnectorError",
    "ClientOSError",
    "ServerDisconnectedError",
    "ServerTimeoutError",
    "ProtocolError",
    "NewConnectionError",
    "MaxRetryError",
}
# S3 error codes that mean "try again later".
_TRANSIENT_S3_CODES = {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout"}


class LungclsError(RuntimeError):
    """A stage cannot run on its input; the message says why and what to do."""


def is_transient(exc: BaseException) -> bool:
    """True for storage and network failures a retry may cure; never for bad data.

    Walks the cause chain, because s3fs and pyarrow wrap the client's error in their own.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, LungclsError):
            return False  # our own verdict on the input: the same input fails again
        if isinstance(current, (ConnectionError, TimeoutError)):
            return True
        if isinstance(current, OSError) and current.errno in _TRANSIENT_ERRNOS:
            return True
        if any(cls.__name__ in _TRANSIENT_NAMES for cls in type(current).__mro__):
            return True
        code = getattr(current, "response", None)
        if isinstance(code, dict) and code.get("Error", {}).get("Code") in _TRANSIENT_S3_CODES:
            return True
        current = current.__cause__ or current.__context__
    return False
