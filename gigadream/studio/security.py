"""Who may ask the studio for what (the page runs jobs on someone's GPU box).

- Loopback only by default. Bound to any other address, every request, page and API alike,
  needs the token printed at start (``?token=`` once, then a cookie; or
  ``Authorization: Bearer``), as Jupyter does. ``--token`` asks for it on loopback too.
- On loopback, the Host header must name the studio (a DNS-rebinding page cannot reach it)
  and a POST from another origin is refused (a web page cannot queue jobs here).
- A picked path must resolve inside an ``--images`` folder (no ``..``, no symlink out), and a
  served file inside its job's or image's folder.
"""
from __future__ import annotations

import hmac
import ipaddress
from pathlib import Path

from ..errors import InputError

TOKEN_COOKIE = "gigadream_token"


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


def refusal(request, token: str | None, host: str, port: int) -> HTTPError | None:
    """Why ``request`` may not reach the studio, or None: the token where one is required;
    on loopback without one, the Host; for a change, the Origin."""
    if token:
        auth = request.headers.get("authorization", "")
        given = (request.query_params.get("token") or request.cookies.get(TOKEN_COOKIE)
                 or (auth[7:] if auth.lower().startswith("bearer ") else None))
        if not given or not hmac.compare_digest(given, token):
            return HTTPError(401, "this studio needs its token: open the address that "
                                  "'gigadream serve' printed (…/?token=…), or send "
                                  "'Authorization: Bearer TOKEN'")
    else:
        named = request.headers.get("host", "")
        if named not in app_hosts(host, port):
            return HTTPError(421, f"host {named!r} is not this studio's address")
    origin = request.headers.get("origin")
    if request.method not in ("GET", "HEAD") and origin and \
            origin.split("://", 1)[-1] != request.headers.get("host"):
        return HTTPError(403, f"a request from {origin} is not allowed to change the studio")
    return None


def remember_token(request, response, token: str | None) -> None:
    """The token given once as ``?token=`` kept as a cookie, so that links need not carry it."""
    if token and request.query_params.get("token"):
        response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")


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
