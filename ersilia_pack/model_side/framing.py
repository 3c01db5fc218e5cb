"""The framing between the server and its model processes, written once for both sides.

A frame is a 4-byte big-endian length followed by a JSON object. The model-side processes
(the load-once worker and the warm runner) run on the model environment's interpreter, which
does not have ersilia_pack installed: a copy of this module is rendered into each bundle's
``app/`` folder beside them, so it imports nothing but the standard library.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import IO, Any

HEADER = struct.Struct(">I")
# A frame larger than this is a broken peer, not a big batch (a batch of 100,000 rows of
# 2,000 numbers is about 2 GB of JSON; requests that big are split into runs well before).
MAX_FRAME = 1 << 31


class FrameError(Exception):
    """The peer sent something that is not a frame."""


def _jsonable(value: Any) -> Any:
    """What json cannot write itself: numpy scalars and arrays, and anything else as text."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def encode(payload: dict[str, Any]) -> bytes:
    """One frame holding ``payload``."""
    data = json.dumps(payload, default=_jsonable).encode()
    return HEADER.pack(len(data)) + data


def decode_size(header: bytes) -> int:
    """The length a frame header announces; FrameError when it cannot be a frame."""
    (size,) = HEADER.unpack(header)
    if size > MAX_FRAME:
        raise FrameError(f"a frame of {size} bytes announced: the peer is not speaking frames")
    return int(size)


def decode_body(body: bytes) -> dict[str, Any]:
    """The object a frame body holds; FrameError when it is not a JSON object."""
    try:
        payload = json.loads(body)
    except ValueError as error:
        raise FrameError(f"a frame that is not JSON: {error}") from error
    if not isinstance(payload, dict):
        raise FrameError("a frame that is not a JSON object")
    return payload


def read_frame(stream: IO[bytes]) -> dict[str, Any] | None:
    """The next frame from a blocking binary stream; None at its end."""
    header = stream.read(HEADER.size)
    if len(header) < HEADER.size:
        return None
    size = decode_size(header)
    body = stream.read(size)
    if len(body) < size:
        return None
    return decode_body(body)


def write_frame(stream: IO[bytes], payload: dict[str, Any]) -> None:
    """Write one frame to a blocking binary stream and flush it."""
    stream.write(encode(payload))
    stream.flush()


class FrameBuffer:
    """Frames from a non-blocking reader, fed whatever bytes arrived (a process that waits on
    several pipes with ``select`` cannot use a buffered stream: its buffer hides bytes from
    ``select``)."""

    def __init__(self) -> None:
        self._data = bytearray()

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """The frames ``data`` completes, in order; FrameError when the peer speaks garbage."""
        return [decode_body(body) for body in self.feed_raw(data)]

    def feed_raw(self, data: bytes) -> list[bytes]:
        """The bodies of the frames ``data`` completes, undecoded (for passing them on)."""
        self._data += data
        bodies = []
        while len(self._data) >= HEADER.size:
            size = decode_size(bytes(self._data[: HEADER.size]))
            end = HEADER.size + size
            if len(self._data) < end:
                break
            bodies.append(bytes(self._data[HEADER.size : end]))
            del self._data[:end]
        return bodies


def frame(body: bytes) -> bytes:
    """A frame around a body that is already JSON."""
    return HEADER.pack(len(body)) + body


def wrap_reply(call_id: Any, body: bytes) -> bytes:
    """A frame carrying another process's reply (a JSON body, passed on undecoded) under the
    id of the call it answers: ``{"id": ..., "reply": {...}}``."""
    return frame(b'{"id":' + json.dumps(call_id).encode() + b',"reply":' + body + b"}")


def bundle_usage(program: str, usage: str, manifest: Path) -> str:
    """A model-side program's usage text, naming the model and the ersilia_pack that copied
    it, as the bundle's manifest says (the program is the same file in every bundle)."""
    try:
        card = json.loads(manifest.read_text(encoding="utf-8"))
        model = f"{card['model_id']} (ersilia_pack {card['ersilia_pack_version']})"
    except (OSError, ValueError, LookupError, TypeError):
        model = f"a bundle's model (no readable manifest at {manifest})"
    return f"{program} of {model}\n{usage}"
