"""The HTTP/1.1 front's header block: the framing fields are ours, whatever case the
engine's fields spell them in, and every other field goes out as given."""

from __future__ import annotations

from multidict import CIMultiDict

from edge.front.h1_wire import header_block


def test_framing_fields_in_any_case_are_left_out_and_the_rest_kept_in_order() -> None:
    headers: CIMultiDict[str] = CIMultiDict(
        [
            ("Content-Type", "text/plain"),
            ("content-length", "5"),
            ("TRANSFER-ENCODING", "chunked"),
            ("Connection", "close"),
            ("keep-Alive", "timeout=5"),
            ("X-Content-Length", "kept"),
            ("Vary", "Accept-Encoding"),
        ]
    )
    assert header_block(headers) == [
        "Content-Type: text/plain\r\n",
        "X-Content-Length: kept\r\n",
        "Vary: Accept-Encoding\r\n",
    ]


def test_names_outside_ascii_are_kept() -> None:
    headers: CIMultiDict[str] = CIMultiDict([("Tran\u017ffer-Encoding", "x"), ("X-Ünïcode", "y")])
    assert header_block(headers) == ["Tran\u017ffer-Encoding: x\r\n", "X-Ünïcode: y\r\n"]


def test_another_skip_list_is_honoured() -> None:
    headers: CIMultiDict[str] = CIMultiDict([("Date", "d"), ("content-length", "1")])
    assert header_block(headers, skip=("Date",)) == ["content-length: 1\r\n"]
