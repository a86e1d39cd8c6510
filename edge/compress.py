"""Compressed variants made once per object at fill time, and streaming decoding.

A cached object is compressed when it is stored, never per hit: perf-notes measured
on-the-fly brotli at 100 KiB at 400 req/s for nginx, where a stored variant costs no
more to serve than the identity body. `make_variants` streams the stored body through
the encoders file-to-file on the I/O gateway (`edge.store.io`), so no body is held
whole in memory and no file call runs on the event loop, and stores each result
beside the object with `ObjectStore.add_encoding`.

`StreamDecoder` undoes an origin's content coding chunk by chunk, for a client that
does not accept it (RFC 9110 8.4: a recipient may decode a representation it received
with a coding). Its output per step is bounded, so a small hostile input cannot make
it return gigabytes at once, and its output in all is bounded by `max_output` (the
object size limit): a 1.6 KB br body that decodes to 1 GiB is a decompression bomb,
refused with `DecodeLimit` once it passes the limit. Callers iterate `iter_decode`
and write each piece before the next is made, so memory stays at about one piece.
"""

from __future__ import annotations

import contextlib
import os
import zlib
from collections.abc import Callable, Iterator

import brotli
import xxhash

from edge.cache.encoding import is_compressible
from edge.store import BodyCorrupt, BodyGone, BodyRef, ObjectStore, StoreError, io

__all__ = [
    "BROTLI_QUALITY",
    "GZIP_LEVEL",
    "STORED_ENCODINGS",
    "DecodeError",
    "DecodeLimit",
    "StreamDecoder",
    "make_variants",
]

#: the codings stored beside the identity body, most preferred first
STORED_ENCODINGS = ("br", "gzip")
#: perf-notes: br-4..6 costs 3-8 ms per 100 KiB, paid once per object, ratio about
#: gzip-6's; quality 11 costs seconds per MiB and is not worth it at fill time
BROTLI_QUALITY = 5
#: zlib's default level, nginx's gzip_comp_level choice of most configurations
GZIP_LEVEL = 6
#: a variant is kept only when at most this fraction of the identity size: a coding
#: that saves less is not worth a second copy and the client's decoding work
KEEP_RATIO = 0.95
#: bytes read from the source per step
CHUNK = 256 * 1024
#: an identity source held in memory of at most this many bytes is compressed in
#: memory and its variants handed to the store as bytes (`_code_in_memory`): as temp
#: files they were written, read back by the index and removed, fourteen system
#: calls for variants the index keeps in their row
IN_MEMORY_MAX = 64 * 1024
#: the size a decoder's output pieces are held to (bounds memory on highly compressed
#: input); brotli's output buffer may overshoot its limit, up to twice this
DECODE_PIECE = 256 * 1024


class DecodeError(ValueError):
    """A coded body is malformed or truncated, or uses a coding we cannot decode."""


class DecodeLimit(DecodeError):
    """A coded body decodes to more than the decoder's `max_output` bytes."""


class StreamDecoder:
    """Undoes one content coding ("gzip", "x-gzip", "deflate", "br", "identity") incrementally.

    Feed chunks to `iter_decode` (bounded pieces; `decode` joins them) and call `flush`
    at the end of the body; `flush` raises `DecodeError` if the coded stream was cut
    short. More than `max_output` decoded bytes in all raise `DecodeLimit`.
    """

    def __init__(self, encoding: str, max_output: int | None = None) -> None:
        """A decoder for `encoding`; `DecodeError` if we cannot decode it."""
        self.encoding = encoding.strip().lower()
        self.max_output = max_output
        #: decoded bytes handed out so far
        self.output = 0
        self._fed = False
        self._zlib: zlib._Decompress | None = None
        self._brotli: brotli.Decompressor | None = None
        self._head: bytes | None = None
        if self.encoding in ("gzip", "x-gzip"):
            self._zlib = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif self.encoding == "deflate":
            self._head = b""  # the format is chosen once two bytes are in, see _choose_deflate
        elif self.encoding == "br":
            self._brotli = brotli.Decompressor()
        elif self.encoding != "identity":
            raise DecodeError(f"unsupported content coding {encoding!r}")

    def decode(self, chunk: bytes) -> bytes:
        """The decoded bytes that `chunk` completes."""
        return b"".join(self.iter_decode(chunk))

    def iter_decode(self, chunk: bytes) -> Iterator[bytes]:
        """The decoded bytes for `chunk`, in pieces of at most 2 * `DECODE_PIECE` bytes.

        Each piece is made only when the previous one was taken, so a consumer that
        writes each piece out holds one piece at a time however large the output.
        """
        if not chunk:
            return
        self._fed = True
        if self._head is not None:
            chunk = self._choose_deflate(chunk)
            if not chunk:
                return
        if self._brotli is not None:
            pieces = self._iter_brotli(chunk)
        elif self._zlib is not None:
            pieces = self._iter_zlib(chunk)
        else:
            pieces = iter((chunk,))
        for piece in pieces:
            self._count(len(piece))
            yield piece

    def _count(self, n: int) -> None:
        self.output += n
        if self.max_output is not None and self.output > self.max_output:
            raise DecodeLimit(f"{self.encoding} body decodes to more than {self.max_output} bytes")

    def _choose_deflate(self, chunk: bytes) -> bytes:
        """Pick zlib or raw deflate from the first two bytes; what is still to decode."""
        assert self._head is not None
        head = self._head + chunk
        if len(head) < 2:
            self._head = head
            return b""
        self._head = None
        # RFC 9110 8.4.1.2: "deflate" is the zlib format (RFC 1950), whose header is
        # CM=8 with (CMF*256 + FLG) a multiple of 31; some servers send raw deflate
        # (RFC 1951) instead, which is recognised by that header being absent
        cmf, flg = head[0], head[1]
        is_zlib = cmf & 0x0F == 8 and cmf >> 4 <= 7 and (cmf * 256 + flg) % 31 == 0
        self._zlib = zlib.decompressobj(zlib.MAX_WBITS if is_zlib else -zlib.MAX_WBITS)
        return head

    def flush(self) -> bytes:
        """The end of the body: remaining output; `DecodeError` if the stream is incomplete."""
        if not self._fed:
            return b""  # an empty body (e.g. a 204 that names a coding) decodes to nothing
        if self._brotli is not None:
            if not self._brotli.is_finished():
                raise DecodeError("br stream is truncated")
            return b""
        if self._head is not None:
            raise DecodeError("deflate stream is truncated")
        if self._zlib is not None:
            rest = self._zlib.flush()
            if not self._zlib.eof:
                raise DecodeError(f"{self.encoding} stream is truncated")
            self._count(len(rest))
            return rest
        return b""

    def _iter_brotli(self, chunk: bytes) -> Iterator[bytes]:
        assert self._brotli is not None
        try:
            out = self._brotli.process(chunk, output_buffer_limit=DECODE_PIECE)
            if out:
                yield out
            # with an output limit the decoder keeps the input it could not use yet
            # (brotli >= 1.2): drain it with empty input, one bounded piece at a time,
            # until it asks for more input or has nothing more to give
            while not self._brotli.is_finished():
                out = self._brotli.process(b"", output_buffer_limit=DECODE_PIECE)
                if not out and self._brotli.can_accept_more_data():
                    break
                if out:
                    yield out
        except brotli.error as exc:
            raise DecodeError(f"malformed br stream: {exc}") from exc

    def _iter_zlib(self, chunk: bytes) -> Iterator[bytes]:
        pending = chunk
        try:
            while pending:
                z = self._zlib
                assert z is not None
                if z.eof:
                    # RFC 1952 2.2: a gzip body may hold several members; zero padding
                    # after the last one is tolerated, as gzip(1) does
                    if self.encoding == "deflate" or not pending.strip(b"\0"):
                        return
                    self._zlib = z = zlib.decompressobj(16 + zlib.MAX_WBITS)
                out = z.decompress(pending, DECODE_PIECE)
                if out:
                    yield out
                pending = z.unused_data if z.eof else z.unconsumed_tail
        except zlib.error as exc:
            raise DecodeError(f"malformed {self.encoding} stream: {exc}") from exc


# --------------------------------------------------------------------------- variants


class _Encoder:
    """One output file fed by an incremental compressor."""

    def __init__(self, encoding: str, path: str) -> None:
        self.encoding = encoding
        self.path = path
        self.size = 0
        self._file = open(path, "xb")  # noqa: SIM115 - closed in finish/discard
        self._compress, self._finish = _coder(encoding)

    def feed(self, data: bytes) -> None:
        self._write(self._compress(data))

    def finish(self) -> None:
        self._write(self._finish())
        self._file.close()

    def discard(self) -> None:
        self._file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def _write(self, out: bytes) -> None:
        if out:
            self._file.write(out)
            self.size += len(out)


def _source_chunks(source: BodyRef) -> Iterator[bytes]:
    """The stored bytes of `source`, in chunks (blocking; runs on the gateway)."""
    if source.data is not None:
        view = memoryview(source.data)
        for pos in range(0, len(view), CHUNK):
            yield bytes(view[pos : pos + CHUNK])
        return
    if source.path is None:
        raise BodyGone("source body has neither data nor path")
    total = 0
    hasher = xxhash.xxh3_64()
    try:
        f = open(source.path, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError as exc:
        raise BodyGone(f"body file {source.path} is gone") from exc
    with f:
        while chunk := f.read(CHUNK):
            total += len(chunk)
            hasher.update(chunk)
            yield chunk
    if total != source.size:
        raise BodyGone(f"body file {source.path} has {total} bytes, expected {source.size}")
    # checked at the end, which discards every output made from it: a damaged source
    # never becomes a variant with a checksum of its own
    if source.checksum is not None and hasher.intdigest() != source.checksum:
        raise BodyCorrupt(f"body file {source.path} fails its checksum")


def _transcode(
    source: BodyRef, outputs: dict[str, str], max_decoded: int | None = None
) -> dict[str, int]:
    """Stream `source` once into every output (coding -> path); returns their sizes.

    The source is decoded first when it is coded ("identity" among the outputs
    receives the decoded bytes), and `DecodeLimit` stops it past `max_decoded` bytes.
    On failure every output file is removed.
    """
    decoder = StreamDecoder(source.encoding, max_decoded) if source.encoding != "identity" else None
    encoders: list[_Encoder] = []
    try:
        for encoding, path in outputs.items():
            encoders.append(_Encoder(encoding, path))
        for chunk in _source_chunks(source):
            pieces = decoder.iter_decode(chunk) if decoder is not None else (chunk,)
            for piece in pieces:
                for encoder in encoders:
                    encoder.feed(piece)
        if decoder is not None:
            tail = decoder.flush()
            for encoder in encoders:
                encoder.feed(tail)
        for encoder in encoders:
            encoder.finish()
    except BaseException:
        for encoder in encoders:
            encoder.discard()
        raise
    return {encoder.encoding: encoder.size for encoder in encoders}


def _coder(encoding: str) -> tuple[Callable[[bytes], bytes], Callable[[], bytes]]:
    """The incremental compressor of `encoding` (identity: the bytes as they are),
    as its feed and its finish."""
    if encoding == "gzip":
        z = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        return z.compress, z.flush
    if encoding == "br":
        b = brotli.Compressor(quality=BROTLI_QUALITY)
        return b.process, b.finish
    return (lambda data: data), (lambda: b"")


def _code_in_memory(data: bytes, codings: list[str]) -> dict[str, bytes]:
    """`data` (identity) in each of `codings`, as `_transcode` codes it."""
    coded: dict[str, bytes] = {}
    for coding in codings:
        compress, finish = _coder(coding)
        coded[coding] = compress(data) + finish()
    return coded


def _unlink_all(paths: list[str]) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


async def make_variants(
    store: ObjectStore,
    key: str,
    source: BodyRef,
    content_type: str | None,
    max_decoded: int | None = None,
) -> dict[str, BodyRef]:
    """Store the codings of `key` it lacks among identity, br and gzip; return the new ones.

    Runs once per object, after the fill commits. A coded `source` (as the origin sent
    it) is decoded to identity whatever its type, so a client that does not accept
    the origin's coding still gets a readable body; br and gzip are made only for a
    compressible `content_type` and kept only when at least 5% smaller than identity.
    The work runs on the I/O gateway. Raises `DecodeError` for a
    malformed coded source, `DecodeLimit` for one that decodes to more than
    `max_decoded` bytes (nothing is stored then), and `StoreError` for I/O failures;
    returns {} if the entry is gone.
    """
    entry = await store.get(key)
    if entry is None:
        return {}
    have = set(entry.bodies) | {source.encoding}
    wanted: list[str] = []
    if "identity" not in have:
        wanted.append("identity")
    if is_compressible(content_type):
        wanted.extend(enc for enc in STORED_ENCODINGS if enc not in have)
    if not wanted:
        return {}
    if source.encoding == "identity" and source.data is not None and source.size <= IN_MEMORY_MAX:
        coded = await io.run(_code_in_memory, source.data, wanted)
        small = {enc: data for enc, data in coded.items() if len(data) <= source.size * KEEP_RATIO}
        # all at once: the store makes the object's ready answer in every coding then
        return await store.add_encodings(key, small, made_from=source) or {}
    outputs = {enc: store.tmp_path("." + enc) for enc in wanted}
    try:
        sizes = await io.run(_transcode, source, outputs, max_decoded)
    except OSError as exc:
        raise StoreError(f"compressing {key!r}: {exc}") from exc

    identity_size = source.size if source.encoding == "identity" else sizes["identity"]
    kept = {
        enc: outputs[enc]
        for enc in wanted
        if enc == "identity" or sizes[enc] <= identity_size * KEEP_RATIO
    }
    discard = [path for enc, path in outputs.items() if enc not in kept]
    # all at once: the store makes the object's ready answer in every coding then
    added = await store.add_encodings(key, kept, made_from=source)
    if added is None:  # evicted, purged or replaced meanwhile; the files were removed
        added = {}
    if discard:
        await io.run(_unlink_all, discard)
    return added
