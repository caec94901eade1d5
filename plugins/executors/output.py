"""Byte-level plumbing of an exec stream: frame decoding, end markers, capped capture.

A non-tty exec stream multiplexes stdout and stderr as frames of an 8-byte
header (stream id, three zero bytes, big-endian payload size) plus payload.
The persistent shell writes an end marker after every command; the marker can
arrive split across frames, so it is searched for in a small carried-over
window rather than per frame. Output is kept as head + tail with a count of
what was dropped, so a command printing gigabytes costs bounded memory.
Nothing here does I/O: the shell session feeds bytes in, which keeps these
pieces testable without an engine.
"""

from __future__ import annotations

import re

#: Output kept per command by default: the first and last half of this many bytes.
DEFAULT_OUTPUT_LIMIT = 1 << 20

STDOUT = 1
STDERR = 2

#: First byte of every marker (ASCII record separator): rare in real output,
#: and the scanner only holds back bytes from its last occurrence.
MARK = b"\x1e"


class CappedOutput:
    """Keeps the head and tail of a byte stream, counting what was dropped in between."""

    def __init__(self, limit: int = DEFAULT_OUTPUT_LIMIT) -> None:
        limit = max(int(limit), 2)
        self.head_limit = limit // 2
        self.tail_limit = limit - self.head_limit
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def add(self, chunk: bytes | bytearray | memoryview) -> None:
        if not chunk:
            return
        self.total += len(chunk)
        room = self.head_limit - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        if chunk:
            self.tail += chunk
            if len(self.tail) > 2 * self.tail_limit:  # trim rarely: amortised O(1) per byte
                del self.tail[: len(self.tail) - self.tail_limit]

    @property
    def dropped(self) -> int:
        return max(0, self.total - len(self.head) - min(len(self.tail), self.tail_limit))

    def text(self) -> str:
        """Head + tail as shown text (see :func:`printable`), with a note when bytes were cut."""
        tail = bytes(self.tail[-self.tail_limit :]) if self.tail else b""
        if not self.dropped:
            return printable(bytes(self.head) + tail)
        note = f"\n[... {self.dropped} bytes of output omitted ...]\n"
        return printable(bytes(self.head)) + note + printable(tail)


#: Escape sequences a terminal interprets instead of showing: CSI (colours, cursor
#: moves), OSC (window titles, links; ended by BEL or ST) and two-byte escapes.
_ESCAPES = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b\n]*(?:\x07|\x1b\\)?|[ -/]*[0-~])")
#: Characters a terminal does not show as text: C0 controls except \t and \n, DEL, C1 controls.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
#: What is left after the escapes and carriage returns: runs of NULs, single controls.
_INVISIBLE = re.compile(r"\x00{4,}|" + _CONTROL.pattern)
#: Carriage returns that end a line (``\r\n``, or the end of the output): the line stays.
_LINE_END_CR = re.compile(r"\r+(?=\n|\Z)")
#: A line up to a carriage return followed by more text: that text overwrites it (progress bars).
_OVERWRITTEN = re.compile(r"[^\n]*\r")


def _escape(match: re.Match[str]) -> str:
    text = match.group()
    if len(text) > 1:
        return f"[{len(text)} NUL bytes]"
    code = ord(text)
    return f"\\x{code:02x}" if code < 0x80 else f"\\u{code:04x}"


def printable(data: bytes) -> str:
    """Command output as the text a model is shown: what a terminal would display.

    The one place where output bytes become text, so the run store, trajectory
    records and prompts all see the same thing: invalid UTF-8 becomes U+FFFD;
    colour and other escape sequences are dropped; ``\r\n`` becomes ``\n`` and a
    line redrawn after a bare ``\r`` keeps only its last version; runs of NULs
    are summarised (``[3000 NUL bytes]``) and other control characters escaped
    (``\x07``), so no raw control byte reaches a record or a prompt.
    """
    text = data.decode("utf-8", errors="replace")
    if not _CONTROL.search(text):
        return text
    text = _LINE_END_CR.sub("", _ESCAPES.sub("", text))
    return _INVISIBLE.sub(_escape, _OVERWRITTEN.sub("", text))


class FrameDecoder:
    """Splits a multiplexed exec stream into ``(stream_id, payload)`` frames, incrementally."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self._buf += data
        frames: list[tuple[int, bytes]] = []
        view = memoryview(self._buf)
        pos = 0
        end = len(self._buf)
        while end - pos >= 8:
            size = int.from_bytes(view[pos + 4 : pos + 8], "big")
            if end - pos - 8 < size:
                break
            frames.append((view[pos], bytes(view[pos + 8 : pos + 8 + size])))
            pos += 8 + size
        view.release()
        if pos:
            del self._buf[:pos]
        return frames


class MarkerScanner:
    """Passes a stream's bytes to a sink until ``prefix + VALUE + "\\n"`` appears; keeps VALUE.

    Bytes after the marker (a background job's output racing the marker) are
    kept in :attr:`leftover` for whoever reads next.
    """

    def __init__(self, prefix: bytes, sink: CappedOutput) -> None:
        self.prefix = prefix
        self.sink = sink
        self.value: bytes | None = None
        self.leftover = b""
        self._pending = b""

    @property
    def done(self) -> bool:
        return self.value is not None

    def feed(self, data: bytes) -> None:
        if self.value is not None:
            self.leftover += data
            return
        buf = self._pending + data if self._pending else data
        index = buf.find(self.prefix)
        if index >= 0:
            newline = buf.find(b"\n", index + len(self.prefix))
            self.sink.add(buf[:index])
            if newline < 0:
                self._pending = buf[index:]
                return
            self.value = buf[index + len(self.prefix) : newline]
            self.leftover = buf[newline + 1 :]
            self._pending = b""
            return
        # Hold back a possible partial marker: from the last MARK within reach of the end.
        cut = buf.rfind(MARK, max(0, len(buf) - len(self.prefix) + 1))
        if cut < 0:
            self.sink.add(buf)
            self._pending = b""
        else:
            self.sink.add(buf[:cut])
            self._pending = buf[cut:]

    def flush(self) -> None:
        """The stream ended without a marker: whatever was held back is output after all."""
        if self._pending:
            self.sink.add(self._pending)
            self._pending = b""
