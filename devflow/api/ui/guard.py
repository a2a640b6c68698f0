"""What every POST of the web page must pass before it is read: same origin, a form, CSRF.

- **Origin**: the ``Origin`` header (or, when a browser sent none, ``Referer``) must
  be this server as the browser reached it: the request's scheme (``https`` when a
  proxy says ``X-Forwarded-Proto: https``) and its ``Host``. A request with neither
  header is refused too. The Host itself was checked against the allowlist before.
- **Content type**: ``application/x-www-form-urlencoded`` only (what the page's forms
  send): ``text/plain``, which a cross-site form may send without a preflight, and
  anything else are 415.
- **CSRF**: the form's ``csrf`` field must equal the session's token (before sign-in,
  the sign-in form's cookie), compared in constant time.

Each failure is a ``DevflowError`` (``csrf_failed`` 403, ``unsupported_media_type``
415); nothing is read or done before the checks pass.
"""

from __future__ import annotations

import hmac
from urllib.parse import parse_qsl, urlsplit

from fastapi import Request

from devflow.errors import Code, DevflowError

FORM = "application/x-www-form-urlencoded"
#: the largest form body read
MAX_FORM = 256 * 1024


def scheme(request: Request) -> str:
    forwarded = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return forwarded if forwarded in ("http", "https") else request.url.scheme


def same_origin(request: Request) -> None:
    claimed = request.headers.get("origin") or request.headers.get("referer")
    if not claimed or claimed == "null":
        raise _refused("the request says not where it comes from (no Origin nor Referer)")
    parts = urlsplit(claimed)
    host = request.headers.get("host", "").lower()
    if parts.scheme.lower() != scheme(request) or parts.netloc.lower() != host:
        raise _refused(f"the request comes from {parts.scheme}://{parts.netloc[:100]}, "
                       "not from this page")


async def form(request: Request) -> dict[str, str]:
    """The POST's form, once its origin and content type are checked."""
    same_origin(request)
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != FORM:
        raise DevflowError(Code.UNSUPPORTED_MEDIA_TYPE, f"a form of this page is {FORM}, "
                           f"not {kind or 'nothing'}", hint="post the page's own form")
    too_large = DevflowError(Code.BAD_REQUEST, "the form is too large", hint="shorten it")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_FORM:
        raise too_large  # refused before a byte of it is read
    body = b""
    async for chunk in request.stream():  # never more than MAX_FORM held
        body += chunk
        if len(body) > MAX_FORM:
            raise too_large
    try:
        return dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
    except UnicodeDecodeError as exc:
        raise DevflowError(Code.BAD_REQUEST, "the form is not UTF-8",
                           hint="post the page's own form") from exc


def check_csrf(fields: dict[str, str], expected: str | None) -> None:
    given = fields.get("csrf", "")
    if not expected or not given or not hmac.compare_digest(given.encode(), expected.encode()):
        raise _refused("the form's CSRF token is missing or not this session's")


def _refused(why: str) -> DevflowError:
    return DevflowError(Code.CSRF_FAILED, f"refused: {why}",
                        hint="reload the page and submit its form again")
