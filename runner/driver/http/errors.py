"""The one exception tree of the HTTP layer: every backend (transport.py, httpx_backend.py) and the
response reader raise these, and the client turns them into record fields in one place (client._fail).

Each class names its `error_type` (a shared.records.ERROR_TYPES value) and the record `status`:

    RequestError           protocol_error      error    (base; any other failure)
    ├── ConnectError       connect_error       error    no connection to the server
    ├── ConnectTimeout     connect_timeout     timeout  the connect deadline passed
    ├── RequestTimeout     request_timeout     timeout  no complete response within request_timeout
    ├── HTTPStatusError    http_error          error    a non-2xx status
    ├── ServerError        server_error        error    an error object or event in a 2xx answer
    ├── ConnectionDropped  connection_dropped  error    the connection closed mid-response
    ├── ProtocolError      protocol_error      error    malformed HTTP, SSE or JSON
    ├── NotEventStream     not_event_stream    error    a 2xx stream that is neither SSE nor JSON
    └── EmptyResponse      empty_response      error    a 2xx that carries no output
"""

from __future__ import annotations

from veeksha.shared.records import ERROR, TIMEOUT


class RequestError(Exception):
    """A request failed. `error_type` is a records.ERROR_TYPES value, `status` a record status."""

    error_type = "protocol_error"
    status = ERROR

    def __init__(self, message: str, http_status: int | None = None, body_head: bytes | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.http_status = http_status
        # The first bytes of the body, raw: the client shows a short preview of them, cut only after
        # its secrets are scrubbed (a secret cut in half would survive the scrub).
        self.body_head = body_head


class ConnectError(RequestError):
    error_type = "connect_error"


class ConnectTimeout(RequestError):
    error_type = "connect_timeout"
    status = TIMEOUT


class RequestTimeout(RequestError):
    error_type = "request_timeout"
    status = TIMEOUT


class HTTPStatusError(RequestError):
    error_type = "http_error"


class ServerError(RequestError):
    error_type = "server_error"


class ConnectionDropped(RequestError):
    error_type = "connection_dropped"


class ProtocolError(RequestError):
    error_type = "protocol_error"


class NotEventStream(RequestError):
    """A 2xx answer to a streamed request that is neither an event stream nor JSON (an HTML login
    page, a plain-text notice)."""

    error_type = "not_event_stream"


class EmptyResponse(RequestError):
    """A 2xx that carries no output: an empty body, a stream without a content chunk, no choices."""

    error_type = "empty_response"


# A 101 to a request that asked for no upgrade: the connection now speaks something else.
SWITCHED_PROTOCOLS = "the server switched protocols (HTTP 101 Switching Protocols) instead of answering"


def reader_failure(exc: BaseException) -> ProtocolError:
    """The failure of a request whose response reader raised (input it did not foresee, a bug): the
    request gets a record saying so, not a session task that dies or a wait for its deadline."""
    return ProtocolError(f"cannot read the response: {type(exc).__name__}: {exc}")
