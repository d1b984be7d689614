"""The store on object storage: ``s3://bucket/prefix`` (and ``gs://``, ``az://``).

A store at a URL has the layout of one on disk, key for key (``zarr.json``, ``source/0/c/0/3/7``,
``run.json``), so zarr, napari and any other zarr reader open it as they open the folder. What
differs is how bytes move, and object storage makes that simpler, not harder:

- every write is a whole-object PUT, which S3, GCS and Azure make atomic: a reader sees the
  old object or the new one, never a part. Each task still writes whole chunks that no other
  task writes, so no two writers ever race on one key (zarr v3 has no locks);
- the run record is replaced by one PUT: what ``location.write_text`` gets on disk from a
  temporary file and a rename comes free (there is no rename on S3, and none is needed);
- the disk's tricks (chunk files overwritten in place, spare files renamed into new canvases)
  buy page-cache pages; a bucket has none, so a dropped canvas is deleted.

The functions here take full URLs, as ``os`` functions take full paths (``location`` picks
between the two). Each process opens one obstore client per bucket (``_bucket``) from the URL
and its own environment: credentials, endpoint and region come from the variables each
cloud's SDK reads (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``,
``AWS_ALLOW_HTTP``, ``AWS_REGION``; ``GOOGLE_APPLICATION_CREDENTIALS``; ``AZURE_STORAGE_*``),
never from the URL, and so are never written into the store, the run record, a log or a Dask
task: tasks carry the URL alone and every Dask worker signs with its own machine's
credentials.

obstore (Rust's object_store) is the client: its calls are synchronous where our tasks are
(no event loop in each worker thread, as s3fs would need), release the GIL while bytes move,
and zarr-python wraps the same client as ``zarr.storage.ObjectStore`` for what zarr writes.
"""
from __future__ import annotations

import contextlib
import functools
import re
from datetime import timedelta
from urllib.parse import urlsplit

from ..errors import InputError, StoreError
from ..text import error_line

# A request is retried where the service says it may be (throttling, a 5xx, a dropped
# connection), RETRIES times within RETRY_SECONDS. obstore's own defaults (10 tries over 3
# minutes) would leave a user with a mistyped endpoint waiting minutes for the one line that
# says so.
RETRIES = 3
RETRY_SECONDS = 15


def join(url: str, *keys: str) -> str:
    """``url`` and keys under it, '/'-separated whatever this machine's separator."""
    return "/".join([url.rstrip("/"), *(k.strip("/") for k in keys if k)])


def _split(url: str) -> tuple[str, str]:
    """'s3://bucket/a/b' → ('s3://bucket', 'a/b')."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}", parts.path.strip("/")


@functools.lru_cache(maxsize=64)
def _bucket(base: str):
    """This process's obstore client of ``base`` ('s3://bucket', or 's3://bucket/key' for a
    client whose keys are relative to that prefix), configured from the environment
    (obstore reads each cloud's variables itself)."""
    from obstore.store import from_url
    try:
        # No client_options: given, they replace those the environment sets (AWS_ALLOW_HTTP
        # for an http:// endpoint); obstore's connect timeout is 5 s.
        return from_url(base, retry_config={"max_retries": RETRIES,
                                            "retry_timeout": timedelta(seconds=RETRY_SECONDS)})
    except Exception as e:  # noqa: BLE001 -- obstore raises several kinds for a bad URL
        raise StoreError(f"store {base}: {error_line(e)}; give --store as "
                         "s3://bucket/prefix, gs://bucket/prefix or a folder") from e


# The option that names each role's URL (the role itself is what a message calls it).
ROLES = {"store": "--store", "input": "INPUT", "output": "-o", "style image": "style.images"}


def _errors(url: str, e: BaseException, role: str = "store") -> StoreError:
    """What a failed request means to the user, as one line that names ``url`` (never the
    credentials: obstore's messages name the request, not its signature). ``role``: what
    the URL is to the run (``ROLES``)."""
    from obstore import exceptions as ox
    if isinstance(e, StoreError):         # already said (a URL obstore cannot parse)
        return e
    text = str(e)
    base, _ = _split(url)
    what, option = role, ROLES[role]
    if "NoSuchBucket" in text:
        return StoreError(f"{what} {url}: bucket {base} does not exist; create it first or "
                          f"fix the bucket's name in {option}")
    if isinstance(e, (ox.PermissionDeniedError, ox.UnauthenticatedError)) or any(
            code in text for code in ("InvalidAccessKeyId", "SignatureDoesNotMatch",
                                      "AccessDenied", "ExpiredToken")):
        return StoreError(f"{what} {url}: the object store refused the credentials "
                          f"({_code(text)}); set the cloud's usual variables "
                          "(AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY for S3) in the "
                          "environment of the client and of every worker")
    if "error sending request" in text or "connection" in text.lower():
        host = re.search(r"\b(https?://[^/\s,]+)", text)
        at = f" at {host.group(1)}" if host else ""
        return StoreError(f"{what} {url}: the object store{at} cannot be reached (no answer "
                          f"after {RETRIES} retries); check AWS_ENDPOINT_URL (or the cloud's "
                          "own endpoint) and the network")
    return StoreError(f"{what} {url}: {error_line(e)}")


def _code(text: str) -> str:
    """The service's error code in an obstore message, else its first line, shortened."""
    m = re.search(r"<Code>([^<]+)</Code>", text) or re.search(r"\b(\w+Error|\w+Exception)\b", text)
    return m.group(1) if m else error_line(Exception(text))[:120]


def get(url: str) -> bytes | None:
    """The object at ``url``; None where there is none."""
    data = get_buffer(url)
    return None if data is None else bytes(data)


def get_buffer(url: str) -> memoryview | None:
    """The object at ``url`` as a read-only view of the bytes obstore received (no copy: a
    chunk's 1.5 MB copied costs ~0.3 ms, a tenth of its GET on loopback); None where there is
    none."""
    import obstore as obs
    base, key = _split(url)
    try:
        return memoryview(obs.get(_bucket(base), key).bytes())
    except FileNotFoundError as e:      # obstore's "not found", of the object or the bucket
        if "NoSuchBucket" in str(e):
            raise _errors(url, e) from e
        return None
    except Exception as e:  # noqa: BLE001 -- a failed request: say which, in one line
        raise _errors(url, e) from e


def put(url: str, data) -> None:
    """The object at ``url`` := ``data`` (bytes or any buffer), as one atomic PUT: readers
    see the old object or the new one. Chunks and the run record are single PUTs (no
    multipart: a canvas chunk is 1.5 MB, far below the 5 MB part size)."""
    import obstore as obs
    base, key = _split(url)
    try:
        obs.put(_bucket(base), key, data, use_multipart=False)
    except Exception as e:  # noqa: BLE001
        raise _errors(url, e) from e


def keys_under(url: str) -> list[str]:
    """The keys of every object under ``url``/, relative to it, sorted."""
    import obstore as obs
    base, key = _split(url)
    prefix = f"{key}/" if key else ""
    try:
        found = [m["path"] for batch in obs.list(_bucket(base), prefix=prefix or None)
                 for m in batch]
    except Exception as e:  # noqa: BLE001
        raise _errors(url, e) from e
    return sorted(p[len(prefix):] for p in found if p.startswith(prefix))


def delete_under(url: str) -> None:
    """Every object under ``url``/ (a folder's ``shutil.rmtree``)."""
    import obstore as obs
    base, key = _split(url)
    found = [join(key, k) if key else k for k in keys_under(url)]
    try:
        for at in range(0, len(found), 1000):       # S3's DeleteObjects takes 1000 a call
            obs.delete(_bucket(base), found[at:at + 1000])
    except Exception as e:  # noqa: BLE001
        raise _errors(url, e) from e


def check(url: str, role: str = "store") -> None:
    """Raise the one-line ``StoreError`` that says why ``url`` cannot be used (no such
    bucket, credentials refused, endpoint unreachable), before anything is written."""
    import obstore as obs
    base, key = _split(url)
    try:
        next(iter(obs.list(_bucket(base), prefix=f"{key}/" if key else None, chunk_size=1)),
             None)
    except Exception as e:  # noqa: BLE001
        raise _errors(url, e, role) from e


def head(url: str, role: str = "input", ask_bucket: bool = True) -> dict | None:
    """The object's size and ETag (one HEAD request), None where there is none. A HEAD's 404
    says nothing of the bucket, so it is asked (``check``) unless the caller lists the prefix
    next, which fails on a missing bucket anyway (``ask_bucket=False``)."""
    import obstore as obs
    base, key = _split(url)
    try:
        meta = obs.head(_bucket(base), key)
    except FileNotFoundError as e:
        if "NoSuchBucket" in str(e):
            raise _errors(url, e, role) from e
        if ask_bucket:
            check(url, role)
        return None
    except Exception as e:  # noqa: BLE001
        raise _errors(url, e, role) from e
    return {"size": meta["size"], "etag": meta.get("e_tag")}


def get_ranges(url: str, ranges: list[tuple[int, int]], role: str = "input") -> list[memoryview]:
    """Byte ranges [start, end) of the object at ``url``, in as few ranged GETs as obstore
    makes of them (close ranges are fetched together)."""
    import obstore as obs
    base, key = _split(url)
    try:
        got = obs.get_ranges(_bucket(base), key, starts=[a for a, _ in ranges],
                             ends=[b for _, b in ranges])
    except Exception as e:  # noqa: BLE001
        raise _errors(url, e, role) from e
    return [memoryview(g) for g in got]


@contextlib.contextmanager
def upload(url: str, role: str = "output"):
    """A writable file whose bytes become the object at ``url`` (obstore's ``open_writer``:
    a multipart upload in parts of ``PART_BYTES``, ``PARTS_IN_FLIGHT`` sent at once; an
    object smaller than one part is one PUT at the end). The object appears under its name
    only when the block ends without an exception; on one the upload is aborted, so nothing
    half-written lands under the final name, nor does an unfinished upload stay."""
    import obstore as obs
    from obstore import exceptions as ox
    base, key = _split(url)
    try:
        writer = obs.open_writer(_bucket(base), key, buffer_size=PART_BYTES,
                                 max_concurrency=PARTS_IN_FLIGHT)
    except Exception as e:  # noqa: BLE001
        raise _errors(url, e, role) from e
    try:
        with writer:            # leaving it by an exception aborts the upload
            yield writer
    except ox.BaseError as e:   # a part or the completion refused: which, in one line
        raise _errors(url, e, role) from e


def zarr_store(url: str):
    """zarr's own store rooted at ``url`` (an array or group of the store), for what zarr
    reads and writes: metadata, and arrays whose layout ``chunks`` leaves to zarr. Rooted
    there, not at the bucket, so zarr adds no group metadata above it (as ``zarr.open_array``
    of a folder adds none)."""
    from zarr.storage import ObjectStore
    return ObjectStore(_bucket(url))


# -- images as objects (the input and output of a run at a URL) ----------------------------

# Bytes a streamed read fetches a request: at ~20 ms a request, 8 MB requests keep a 100 MB/s
# link busy; libvips asks for 4-64 KB at a time.
READ_BUFFER = 8 << 20
# Part size of an uploaded output (S3 takes 5 MB to 5 GB a part, at most 10,000 parts: 16 MB
# parts carry an image of up to 160 GB). The part being filled and those in flight are held
# in memory: 48 MB. Two in flight keep a link busy: a libvips JPEG encode makes tens of MB/s.
PART_BYTES = 16 << 20
PARTS_IN_FLIGHT = 2


def open_source(url: str):
    """A pyvips Source that streams the object at ``url`` through buffered ranged GETs
    (obstore's ``open_reader``): libvips decodes it sequentially and never holds the whole
    file. The seek handler lets libvips sniff the format and read a header at the end."""
    import obstore as obs
    import pyvips
    base, key = _split(url)
    try:
        reader = obs.open_reader(_bucket(base), key, buffer_size=READ_BUFFER)
    except FileNotFoundError as e:
        if "NoSuchBucket" in str(e):
            raise _errors(url, e, "input") from e
        raise InputError(f"input {url} not found; check the URL") from e
    except Exception as e:  # noqa: BLE001
        raise _errors(url, e, "input") from e
    source = pyvips.SourceCustom()
    source.on_read(lambda size: bytes(reader.read(size)))
    source.on_seek(lambda offset, whence: reader.seek(offset, whence))
    return source
