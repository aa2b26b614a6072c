"""Guards of one decode, before and while FFmpeg reads the file.

Before: the path is checked without opening anything that could block (a
FIFO, a device), and the frame size a Y4M or PNG header declares is checked
against ``max_pixels``, since FFmpeg would allocate that frame while probing.
FFmpeg is handed an absolute path, so no prefix of a relative name
(``pipe:0.mp4``, ``concat:a|b``) selects one of its protocols.

While: :class:`Limits` holds the ``max_pixels`` cap, checked on every header
and frame size, the cap on one video's output frames (:func:`frames_bytes_cap`),
checked once the frame size is known, and the cooperative deadline, checked
between opens, packets, seeks and frames. Failures become one-line reasons
for :class:`DecodeError`.
"""

from __future__ import annotations

import os
import stat
import struct
import time

from .errors import DecodeError

# The most bytes of frames one video's decode may hand out (uint8
# ``T x 3 x H x W``, ``H = W = input_size`` when it is set): the output is
# allocated once, so a ``sequence_length`` of thousands at a large size fails
# with a clear error instead of the process running out of memory.
# ``CPS_RAY_MAX_FRAMES_BYTES`` (bytes) overrides it, in child processes too.
MAX_FRAMES_BYTES = 16 * 2**30
FRAMES_BYTES_ENV = "CPS_RAY_MAX_FRAMES_BYTES"


def frames_bytes_cap() -> int:
    """The cap on one video's output frames, in bytes: ``CPS_RAY_MAX_FRAMES_BYTES``
    where it is set, else :data:`MAX_FRAMES_BYTES`."""
    value = os.environ.get(FRAMES_BYTES_ENV, "").strip()
    if not value:
        return MAX_FRAMES_BYTES
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{FRAMES_BYTES_ENV} must be a number of bytes, got {value!r}") from None


def frames_too_large(count: int, height: int, width: int, *, machine: bool = True) -> str | None:
    """Why ``count`` uint8 frames of ``3 x height x width`` cannot be held --
    above :func:`frames_bytes_cap`, or (``machine``) above this machine's
    memory -- or None."""
    size = count * 3 * height * width
    cap = frames_bytes_cap()
    what = f"{count} frames of 3 x {height} x {width} bytes ({size / 2**20:.1f} MiB)"
    if size > cap:
        return (f"{what} exceed the cap on one video's frames ({cap / 2**20:.1f} MiB, "
                f"{FRAMES_BYTES_ENV}); ask for fewer frames or a smaller input_size")  # fmt: skip
    memory = _physical_memory() if machine else None
    if memory is not None and size > memory:
        return f"{what} exceed this machine's memory ({memory / 2**20:.1f} MiB)"
    return None


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


class Limits:
    """The guards of one ``decode_frames`` call: the frame-size cap, the cap on
    the output frames and the cooperative deadline. Each raises
    :class:`DecodeError` naming the file."""

    def __init__(self, path: str, max_pixels: int | None, timeout_s: float | None):
        self.path = path
        self.max_pixels = max_pixels
        self.timeout_s = timeout_s
        self._deadline = None if timeout_s is None else time.monotonic() + timeout_s

    def check_time(self) -> None:
        if self._deadline is not None and time.monotonic() > self._deadline:
            raise DecodeError(
                self.path, f"timed out after {self.timeout_s:g} s (decode_timeout_s)", "timeout"
            )

    def check_frames(self, count: int, height, width) -> None:
        """``count`` output frames of ``height x width`` fit
        (:func:`frames_too_large`); an unknown size passes."""
        if not height or not width:
            return
        reason = frames_too_large(count, int(height), int(width))
        if reason is not None:
            raise DecodeError(self.path, reason, "too_large")

    def check_size(self, height, width) -> None:
        """``height x width`` is a frame size; unknown (None or 0) passes."""
        if not height or not width:
            return
        h, w = int(height), int(width)
        if self.max_pixels is not None and h * w > self.max_pixels:
            raise DecodeError(
                self.path,
                f"frame size {w}x{h} = {w * h} pixels exceeds max_pixels ({self.max_pixels})",
                "too_large",
            )
        # FFmpeg's own limit (av_image_check_size); past it FFmpeg fails with
        # unrelated messages ("Device or resource busy" for a Y4M header).
        if (w + 128) * (h + 128) >= (2**31 - 1) // 8:
            raise DecodeError(
                self.path, f"frame size {w}x{h} is larger than FFmpeg can decode", "too_large"
            )


def declared_size(head: bytes) -> tuple[int, int] | None:
    """(height, width) a Y4M or PNG header declares, from the file's first bytes.

    These headers state the size in plain fields, and FFmpeg allocates a
    frame of that size while probing, before any caller could check it.
    """
    if head.startswith(b"YUV4MPEG2 "):
        fields = head.split(b"\n", 1)[0].split()
        dims = {f[:1]: f[1:] for f in fields[1:] if f[:1] in (b"W", b"H")}
        if dims.get(b"W", b"").isdigit() and dims.get(b"H", b"").isdigit():
            return int(dims[b"H"]), int(dims[b"W"])
    if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR" and len(head) >= 24:
        width, height = struct.unpack(">II", head[16:24])
        return height, width
    return None


_NOT_REGULAR = (
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)
_HEAD_BYTES = 4096


def check_file(path: str) -> bytes:
    """Reasons FFmpeg would report badly (or block on), found before it opens
    the file. Returns the file's first bytes."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            target = os.readlink(path)
            raise DecodeError(
                path, f"file not found: broken symbolic link to {target!r}", "missing"
            ) from None
        raise DecodeError(path, "file not found", "missing") from None
    except PermissionError:
        raise DecodeError(path, "permission denied", "unreadable") from None
    except (OSError, ValueError) as e:  # ValueError: a NUL byte in the path
        reason = f"cannot stat the file ({getattr(e, 'strerror', e)})"
        raise DecodeError(path, reason, "unreadable") from None
    _check_mode(path, st)
    try:
        # O_NONBLOCK: if the path became a FIFO since the stat, do not wait for a writer.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except PermissionError:
        raise DecodeError(path, "permission denied", "unreadable") from None
    except OSError as e:
        raise DecodeError(path, f"cannot open the file ({e.strerror})", "unreadable") from None
    try:
        _check_mode(path, os.fstat(fd))
        return os.read(fd, _HEAD_BYTES)
    except OSError as e:
        raise DecodeError(path, f"cannot read the file ({e.strerror})", "unreadable") from None
    finally:
        os.close(fd)


def _check_mode(path: str, st: os.stat_result) -> None:
    if stat.S_ISDIR(st.st_mode):
        raise DecodeError(path, "is a directory, not a video file", "unreadable")
    for test, kind in _NOT_REGULAR:
        if test(st.st_mode):
            raise DecodeError(path, f"is {kind}, not a regular file", "unreadable")
    if not stat.S_ISREG(st.st_mode):
        raise DecodeError(path, "is not a regular file", "unreadable")
    if st.st_size == 0:
        raise DecodeError(path, "empty file (0 bytes)")


def ffmpeg_path(path: str) -> str:
    """``path`` as FFmpeg must see it: absolute, so that no prefix of a
    relative name (``pipe:0.mp4``, ``concat:a|b``) selects an FFmpeg protocol.
    Not normalized: ``link/..`` must keep meaning what ``os.stat`` saw."""
    return path if os.path.isabs(path) else os.path.join(os.getcwd(), path)


def open_by_handle(path: str) -> bool:
    """Whether the decoders must get ``path`` as an open file rather than a
    name: FFmpeg's image2 demuxer reads ``%d`` or a glob in a file's name as
    a pattern, and a name that is not valid UTF-8 cannot cross into C."""
    name = os.path.basename(path)
    if any(c in name for c in "%*?["):
        return True
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def short_reason(err: BaseException) -> str:
    """The message of a torchcodec error without its C++ source location."""
    text = " ".join(str(err).split())
    # "decodeAVFrame, /path/File.cpp:1411, Could not flush decoder: ..." -> the last part.
    if ".cpp:" in text:
        text = text.split(".cpp:", 1)[1].split(",", 1)[-1].strip()
    # torchcodec's "This should never happen. Please report an issue ..." tail.
    text = text.split(" This should never happen.", 1)[0]
    return text[:200]


# Open errors a later route cannot cure.
FATAL_OPEN = ("no video stream", "not a video", "FFmpeg cannot open")


def open_reason(err: Exception, path: str) -> str:
    """The one-line reason torchcodec (the GPU route) could not open ``path``."""
    text = short_reason(err)
    if "best video stream is unknown" in text or "No valid stream" in text:
        return "no video stream in the file"
    if "FrameDims" in text:
        # torchcodec cannot decode a stream whose size FFmpeg's probe missed.
        return (
            "no video stream of known frame size: FFmpeg found no decodable "
            "frame while probing the start of the file"
        )
    if "Could not open input file" in text:
        # "Could not open input file: /abs/name Invalid data ..." -> the FFmpeg part.
        detail = text.split("Could not open input file:", 1)[-1].strip()
        source = " ".join(ffmpeg_path(path).split())
        detail = detail[len(source) :].strip() if detail.startswith(source) else detail
        return ffmpeg_open_reason(detail, path)
    return f"cannot open it ({type(err).__name__}: {text})"


# FFmpeg's messages for a file that is not a video, or too damaged to open.
_KNOWN_DAMAGE = ("Invalid data found when processing input", "End of file", "Input/output error")


def ffmpeg_open_reason(detail: str, path: str) -> str:
    """The one-line reason FFmpeg could not open ``path``, from its error
    message ``detail`` (``strerror`` of a PyAV error, or torchcodec's text)."""
    for known in _KNOWN_DAMAGE:
        if known in detail:
            why = _missing_mp4_index(path) or f"FFmpeg: {known}"
            return f"not a video, or too damaged to open ({why})"
    return f"FFmpeg cannot open it ({detail})"


def _missing_mp4_index(path: str) -> str | None:
    """Why an MP4/MOV file FFmpeg refused cannot open, if its index is missing:
    the common damage of an upload or a recording cut short."""
    kinds: list[bytes] = []
    try:
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as f:
            size = os.fstat(f.fileno()).st_size
            pos = 0
            while pos + 8 <= size and len(kinds) < 10_000:
                f.seek(pos)
                header = f.read(16)
                box_size, kind = struct.unpack(">I4s", header[:8])
                if box_size == 1 and len(header) == 16:  # 64-bit size
                    box_size = struct.unpack(">Q", header[8:])[0]
                elif box_size == 0:  # the box runs to the end of the file
                    box_size = size - pos
                if box_size < 8 or not kind.isalnum():
                    return None  # not a box: noise, not a cut
                kinds.append(kind)
                pos += box_size
    except OSError:
        return None
    if not kinds or kinds[0] != b"ftyp" or b"moov" in kinds:
        return None
    if pos > size:
        return "MP4 cut short: its index (moov box) is missing"
    return "MP4 without its index (no moov box)"
