"""Videos where users keep them: object stores and other filesystems.

An input ``scheme://...`` (``s3://``, ``gs://``, ``hf://``, ``https://``) is
read through the filesystem pyarrow opens for it (``FileSystem.from_uri``:
S3 with the AWS environment variables, ``AWS_ENDPOINT_URL`` included, and
URI options such as ``?endpoint_override=host:port&scheme=http``; GCS),
through fsspec where pyarrow has no filesystem for the scheme and fsspec is
installed, and through the standard library for ``http(s)://``.

The object is copied, one streamed read, into a local spill file of at most
:data:`SPILL_MAX_BYTES` (``CPS_RAY_SPILL_MAX_BYTES``) in the temporary folder
(``CPS_RAY_SPILL_DIR``), decoded as a local file, and deleted. Why a copy and
not ranged reads: the packet plan reads every packet once anyway, and an
object store answers one streamed GET far faster than the hundreds of small
ranged reads FFmpeg's demuxers make (``benchmark/benchmark_remote.py``).

Failures become :class:`DecodeError` naming the URI (without credentials):
a missing object or bucket and a denied access at once; timeouts, resets and
short reads after :data:`TRIES` tries with backoff. The decode's deadline
(``decode_timeout_s``) covers the copy.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager

from .errors import DecodeError

SPILL_MAX_BYTES = int(os.environ.get("CPS_RAY_SPILL_MAX_BYTES", 16 * 2**30))
TRIES = 3
BACKOFF_S = 0.5
_CHUNK = 8 * 2**20

_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_SECRET_KEYS = re.compile(r"(key|secret|token|password|credential|signature|sig)", re.I)


def is_remote(path: str) -> bool:
    """``scheme://...`` other than ``file://``."""
    return _URI.match(path) is not None and not path.lower().startswith("file://")


def redact(path: str) -> str:
    """``path`` without credentials: a URI's user information and the query
    parameters that carry keys, secrets, tokens or signatures."""
    if not is_remote(path):
        return path
    parts = urllib.parse.urlsplit(path)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    kept = [(k, "REDACTED" if _SECRET_KEYS.search(k) else v) for k, v in query]
    return urllib.parse.urlunsplit(
        (parts.scheme, netloc, parts.path, urllib.parse.urlencode(kept, safe=":/"), "")
    )


class _Permanent(Exception):
    """A failure another try cannot cure, of an error kind (see :mod:`cps_ray.errors`)."""

    def __init__(self, reason: str, kind: str = "unreadable"):
        super().__init__(reason)
        self.kind = kind


def _open_stream(uri: str):
    """(readable binary stream, size or None) of the object at ``uri``."""
    scheme = uri.split("://", 1)[0].lower()
    if scheme in ("http", "https"):
        import urllib.error
        import urllib.request

        try:
            response = urllib.request.urlopen(uri, timeout=60)  # noqa: S310 (the user's input)
        except urllib.error.HTTPError as err:
            if err.code == 404:
                raise _Permanent("object not found (HTTP 404)", "missing") from None
            if err.code in (401, 403):
                raise _Permanent(f"access denied (HTTP {err.code})") from None
            raise
        size = response.headers.get("Content-Length")
        return response, int(size) if size and size.isdigit() else None
    import pyarrow.fs as pafs

    try:
        fs, path = pafs.FileSystem.from_uri(uri)
    except ValueError as err:  # pyarrow.ArrowInvalid: a scheme pyarrow has no filesystem for
        fs, path = _fsspec(uri, err)
    try:
        info = fs.get_file_info(path)
    except PermissionError:
        raise _Permanent("access denied") from None
    except OSError as err:
        if "ACCESS_DENIED" in str(err) or "AccessDenied" in str(err):
            raise _Permanent("access denied") from None
        raise
    if info.type == pafs.FileType.NotFound:
        raise _Permanent("object not found", "missing")
    if info.type == pafs.FileType.Directory:
        raise _Permanent("is a folder (prefix), not an object")
    return fs.open_input_stream(path), info.size


def _fsspec(uri: str, why: BaseException):
    """pyarrow's view of an fsspec filesystem, for schemes pyarrow lacks."""
    try:
        import fsspec
        import pyarrow.fs as pafs
    except ImportError:
        raise _Permanent(
            f"no filesystem for {uri.split('://', 1)[0]}:// (pyarrow: {why}; fsspec not installed)",
            "unsupported",
        ) from None
    try:
        fs, path = fsspec.core.url_to_fs(uri)
    except (ValueError, ImportError) as err:
        raise _Permanent(f"no filesystem for this URI ({err})", "unsupported") from None
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def _suffix(uri: str) -> str:
    name = urllib.parse.urlsplit(uri).path.rsplit("/", 1)[-1]
    ext = os.path.splitext(name)[1]
    return ext if re.fullmatch(r"\.[A-Za-z0-9]{1,8}", ext) else ""


def _copy_once(uri: str, target, check_time) -> None:
    stream, size = _open_stream(uri)
    if size is not None and size > SPILL_MAX_BYTES:
        raise _Permanent(
            f"object of {size} bytes exceeds the spill limit of {SPILL_MAX_BYTES} bytes "
            "(CPS_RAY_SPILL_MAX_BYTES)",
            "too_large",
        )
    copied = 0
    with stream:
        while True:
            check_time()
            chunk = stream.read(_CHUNK)
            if not chunk:
                break
            copied += len(chunk)
            if copied > SPILL_MAX_BYTES:
                raise _Permanent(
                    f"object exceeds the spill limit of {SPILL_MAX_BYTES} bytes", "too_large"
                )
            target.write(chunk)
    if size is not None and copied != size:
        raise OSError(f"read {copied} of {size} bytes (the object was cut short)")
    if copied == 0:
        raise _Permanent("empty object (0 bytes)", "corrupt")


@contextmanager
def local_copy(uri: str, check_time=lambda: None) -> Iterator[str]:
    """A local file holding the object at ``uri``, deleted on exit. Raises
    :class:`DecodeError` naming the URI (redacted)."""
    shown = redact(uri)
    folder = os.environ.get("CPS_RAY_SPILL_DIR") or tempfile.gettempdir()
    handle = tempfile.NamedTemporaryFile(
        prefix="cps_ray-", suffix=_suffix(uri), dir=folder, delete=False
    )
    try:
        for attempt in range(TRIES):
            handle.seek(0)
            handle.truncate()
            try:
                _copy_once(uri, handle, check_time)
                break
            except _Permanent as err:
                raise DecodeError(shown, str(err), err.kind) from None
            except DecodeError as err:  # the deadline
                raise DecodeError(shown, err.reason, err.kind) from None
            except (OSError, TimeoutError, ConnectionError) as err:
                if attempt + 1 == TRIES:
                    text = " ".join(str(err).replace(uri, shown).split())[:200]
                    raise DecodeError(
                        shown, f"remote read failed after {TRIES} tries: {text}", "remote"
                    ) from None
                time.sleep(BACKOFF_S * 2**attempt)
        handle.close()
        yield handle.name
    finally:
        handle.close()
        try:
            os.unlink(handle.name)
        except FileNotFoundError:
            pass
