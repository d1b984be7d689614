"""Who may ask the studio for what (the page runs jobs on someone's GPU box, on a machine
that other people and other pages share).

- A token on every request, loopback included, as Jupyter does: printed at start, given once
  as ``?token=`` (then kept as a ``SameSite=Strict`` cookie, and the address redirected
  without it) or sent as ``Authorization: Bearer`` by scripts. ``--no-token`` (loopback only)
  keeps the Host check alone.
- Whatever the token says, another site starts no work: the cookie travels with requests
  from *same-site* pages too (another port of the same host), so the browser's
  ``Sec-Fetch-Site`` decides. Only ``same-origin`` and ``none`` (typed, bookmarked) may build
  (deep zoom, TIFF, thumbnails) or change anything; another site may only navigate to a
  page. Every change is a POST with a content type a page elsewhere cannot send without a
  CORS preflight (``application/json``; an upload: multipart with ``X-Requested-With`` or
  ``Authorization``), which the studio never answers; an ``Origin`` that is not the
  studio's is refused.
- Every response forbids framing (``frame-ancestors 'none'``, ``X-Frame-Options``), sniffing
  (``nosniff``), referrers (the token must not leak) and other origins' reads
  (``Cross-Origin-Resource-Policy``).
- With ``--no-token`` the Host header must name the studio (a DNS-rebinding page cannot
  reach it; with a token such a page has no cookie to send).
- A picked path must resolve inside an ``--images`` folder (no ``..``, no symlink out), and a
  served file inside its job's or image's folder.
- libvips reads only JPEG, PNG, TIFF and WebP, in the server and in every child
  (``block_loaders``).
"""
from __future__ import annotations

import hmac
import ipaddress
import re
from pathlib import Path
from urllib.parse import urlencode

from ..errors import InputError

TOKEN_COOKIE = "gigadream_token"
# the libvips loaders the studio lets run (their File, Buffer and Source variants)
VIPS_LOADERS = ("VipsForeignLoadJpeg", "VipsForeignLoadPng", "VipsForeignLoadTiff",
                "VipsForeignLoadWebp")
# routes whose GET makes something (a child process, a file): never for another site
BUILDING = re.compile(r"^/(images/\d+/view/|jobs/\d+/view/|jobs/\d+/files/result\.tif$|thumbs/)")
SAFE_SITES = ("same-origin", "none")
HEADERS = {"Content-Security-Policy": "frame-ancestors 'none'", "X-Frame-Options": "DENY",
           "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
           "Cross-Origin-Resource-Policy": "same-origin"}


class HTTPError(Exception):
    """A refused request: its status and the one-line reason the page shows."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def app_hosts(host: str, port: int) -> set[str]:
    """The Host headers that name the studio at ``host:port`` on loopback."""
    names = {host, "localhost", "127.0.0.1", "[::1]"}
    return {f"{n}:{port}" for n in names} | ({n for n in names} if port == 80 else set())


def cookie_name(port: int) -> str:
    """The token's cookie, one per port: cookies are shared by every port of a host, and two
    studios on one box must not overwrite each other's."""
    return f"{TOKEN_COOKIE}_{port}"


def given_token(request, port: int) -> str | None:
    auth = request.headers.get("authorization", "")
    return (request.query_params.get("token") or request.cookies.get(cookie_name(port))
            or (auth[7:] if auth.lower().startswith("bearer ") else None))


def refusal(request, token: str | None, host: str, port: int) -> HTTPError | None:
    """Why ``request`` may not reach the studio, or None: the token (without one, the
    Host); for work or a change, where it comes from; for a change, its
    method and content type."""
    if token:
        given = given_token(request, port)
        if not given or not hmac.compare_digest(given.encode(), token.encode()):
            return HTTPError(401, "this studio needs its token: open the address that "
                                  "'gigadream serve' printed (…/?token=…), or send "
                                  "'Authorization: Bearer TOKEN'")
    else:       # --no-token (loopback only): the Host must name the studio
        named = request.headers.get("host", "")
        if named not in app_hosts(host, port):
            return HTTPError(421, f"host {named!r} is not this studio's address")
    method, path = request.method, request.url.path
    site = request.headers.get("sec-fetch-site")
    changes = method not in ("GET", "HEAD")
    if site is not None and site not in SAFE_SITES:
        # another site (another port of this host is "same-site") may open a page, no more
        navigation = (request.headers.get("sec-fetch-mode") == "navigate"
                      and request.headers.get("sec-fetch-dest") == "document")
        if changes or BUILDING.match(path) or not navigation:
            return HTTPError(403, f"a request from another site ({site}) may not use the "
                                  "studio; open it from its own address")
    origin = request.headers.get("origin")
    if origin is not None and origin.split("://", 1)[-1] != request.headers.get("host"):
        if changes or BUILDING.match(path):
            return HTTPError(403, f"a request from {origin} is not allowed to change the studio")
    if changes:
        return _change_refusal(request, path)
    return None


def _change_refusal(request, path: str) -> HTTPError | None:
    """A POST: JSON, or the upload's multipart with a header that a form cannot send. Both
    need a CORS preflight from another origin, which the studio refuses: so a POST without
    ``Origin`` (an old browser's form, a script) is safe too."""
    if request.method != "POST":
        return HTTPError(405, f"{request.method} is not a studio action; actions are POSTs")
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if path == "/api/images":
        if ctype != "multipart/form-data":
            return HTTPError(415, "expected a multipart/form-data upload with a 'file' field")
        if not (request.headers.get("x-requested-with") or request.headers.get("authorization")):
            return HTTPError(403, "an upload needs the header 'X-Requested-With: gigadream' "
                                  "(or 'Authorization: Bearer TOKEN')")
    elif ctype != "application/json":
        return HTTPError(415, f"expected Content-Type: application/json, got {ctype or 'none'}")
    return None


def secure_cookie(request, forced: bool, proxies: frozenset[str]) -> bool:
    """Whether the token's cookie is ``Secure``: when the studio is reached over TLS, as
    ``--secure-cookie`` says, or as the ``X-Forwarded-Proto`` of a ``--trusted-proxy``
    (the address the studio sees it connect from) says; any other client's header is
    ignored."""
    if forced or request.url.scheme == "https":
        return True
    client = request.client.host if request.client else None
    return client in proxies and \
        request.headers.get("x-forwarded-proto", "").split(",")[0].strip() == "https"


def with_headers(response) -> None:
    for k, v in HEADERS.items():
        response.headers.setdefault(k, v)


def token_redirect(request, token: str | None, port: int, secure: bool):
    """The printed address (``?token=``) on a page: a redirect to the same page without the
    token (out of the history and the address bar), setting the cookie; None otherwise."""
    from fastapi.responses import RedirectResponse
    if not token or request.method != "GET" or "token" not in request.query_params \
            or request.url.path.startswith("/api/"):
        return None
    rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
    response = RedirectResponse(request.url.path + (f"?{urlencode(rest)}" if rest else ""), 303)
    response.set_cookie(cookie_name(port), token, httponly=True, samesite="strict",
                        secure=secure)
    return response


def block_loaders() -> None:
    """libvips in this process reads JPEG, PNG, TIFF and WebP only: untrusted loaders blocked
    (``block_untrusted_set``), then every loader but those four (SVG, PDF, HEIF, GIF, the
    matrix and CSV loaders...), whatever asks for a decode."""
    import pyvips
    pyvips.block_untrusted_set(True)
    pyvips.operation_block_set("VipsForeignLoad", True)
    for name in VIPS_LOADERS:
        pyvips.operation_block_set(name, False)


def confine(text: str, roots: list[Path]) -> Path:
    """The file a user picked, as an absolute path that resolves (symlinks followed) inside
    one of ``roots``; relative paths are taken from the first root. Raises InputError."""
    if not roots:
        raise InputError("no --images folders to pick from; start the studio with "
                         "--images DIR, or upload the image")
    given = Path(text)
    if ".." in given.parts:
        raise InputError(f"{text}: '..' is not allowed in a picked path; give a path inside "
                         "the --images folders")
    path = (given if given.is_absolute() else roots[0] / given).resolve()
    if not any(path.is_relative_to(r.resolve()) for r in roots):
        raise InputError(f"{text} is outside the --images folders "
                         f"({', '.join(str(r) for r in roots)}); pick a file inside them")
    if not path.is_file():
        raise InputError(f"{text}: no such file in the --images folders")
    return path


def inside(folder: Path, path: str, what: str) -> Path:
    """``folder/path`` if it is a file that resolves inside ``folder``; else a 404."""
    folder = folder.resolve()
    target = (folder / path).resolve()
    if not target.is_relative_to(folder) or not target.is_file():
        raise HTTPError(404, f"no file {path} in {what}")
    return target
