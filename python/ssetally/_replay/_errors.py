"""Error answers: OpenAI error bodies, their messages and the HTML pages of status answers."""

from __future__ import annotations

from http import HTTPStatus

from ._sse import JSON

_NO_KEY_MESSAGE = (
    "You didn't provide an API key. You need to provide your API key in an Authorization "
    "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
)
_BAD_JSON_MESSAGE = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
    "using your HTTP library correctly. The OpenAI API expects a JSON payload.)"
)
_STREAM_ERROR_MESSAGE = "The server had an error while processing your request. Sorry about that!"


def _error(message: str, kind: str, param: str | None = None, code: str | None = None) -> JSON:
    """An OpenAI error body."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _status_error(status: int) -> JSON:
    """The OpenAI error body answering with ``status``."""
    if status == 401:
        return _error(
            "Incorrect API key provided.", "invalid_request_error", None, "invalid_api_key"
        )
    if status == 404:
        return _error(
            "The model does not exist or you do not have access to it.",
            "invalid_request_error",
            "model",
            "model_not_found",
        )
    if status == 429:
        return _error(
            "Rate limit reached for requests. Please try again later.",
            "requests",
            None,
            "rate_limit_exceeded",
        )
    if status == 503:
        return _error(
            "The engine is currently overloaded, please try again later.",
            "server_error",
            None,
            None,
        )
    if status >= 500:
        return _error(_STREAM_ERROR_MESSAGE, "server_error")
    return _error(f"Replayed error status {status}.", "invalid_request_error", "model", None)


def _html_page(status: int) -> str:
    """The HTML page a proxy in the way would answer ``status`` with."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Status"
    title = f"{status} {phrase}"
    return (
        f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n"
        f"<center><h1>{title}</h1></center>\r\n<hr><center>nginx</center>\r\n"
        "</body>\r\n</html>\r\n"
    )


class _BadRequest(Exception):
    """A request parameter is invalid: answered with a 400 naming ``param``."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
