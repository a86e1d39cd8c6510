"""Conditional requests answered from a stored 200 (RFC 9110 13).

Entity-tag comparison, the precondition evaluation order of RFC 9110 13.2.2, and
If-Range. Entity-tags are compared exactly as RFC 9110 8.8.3 spells them: only
`W/` (upper case) marks a weak tag, the opaque-tag is the quoted string (its
characters may be obs-text), and a tag that is not one (unquoted, `w/"x"`) matches
nothing, not even itself.
"""

from __future__ import annotations

from edge.cache.dates import parse_http_date
from edge.cache.headers import Headers


def _is_etagc(char: str) -> bool:
    """etagc = %x21 / %x23-7E / obs-text (RFC 9110 8.8.3); obs-text is %x80-FF, which a
    field decoded as Latin-1 (as HTTP/1.1 servers do) holds as U+0080-U+00FF."""
    code = ord(char)
    return code == 0x21 or 0x23 <= code <= 0x7E or 0x80 <= code <= 0xFF


def _split_etag(tag: str) -> tuple[bool, str] | None:
    """(is weak, opaque-tag with its quotes) of an entity-tag (RFC 9110 8.8.3), or None
    when `tag` is not one."""
    tag = tag.strip(" \t")
    weak = tag.startswith("W/")
    opaque = tag[2:] if weak else tag
    if len(opaque) < 2 or opaque[0] != '"' or opaque[-1] != '"':
        return None
    if not all(_is_etagc(char) for char in opaque[1:-1]):
        return None
    return weak, opaque


def etag_matches_weak(a: str, b: str) -> bool:
    """Weak comparison: the opaque-tags are equal, weak or not (RFC 9110 8.8.3.2)."""
    split_a, split_b = _split_etag(a), _split_etag(b)
    return split_a is not None and split_b is not None and split_a[1] == split_b[1]


def etag_matches_strong(a: str, b: str) -> bool:
    """Strong comparison: neither tag is weak and they are equal (RFC 9110 8.8.3.2)."""
    split_a, split_b = _split_etag(a), _split_etag(b)
    return (
        split_a is not None
        and split_b is not None
        and not split_a[0]
        and not split_b[0]
        and split_a[1] == split_b[1]
    )


def parse_etag_list(value: str) -> list[str] | None:
    """The entity-tags of an If-Match / If-None-Match value; ["*"] for "*"; None if
    malformed.

    Tags are read by their quotes, not by commas, since an opaque-tag may hold a
    comma (etagc includes %x2C). A bare token (an unquoted tag echoed back from a
    non-conforming origin) is accepted as a member.
    """
    text = value.strip(" \t")
    if text == "*":
        return ["*"]
    tags: list[str] = []
    pos = 0
    while pos < len(text):
        char = text[pos]
        if char in " \t,":
            pos += 1
            continue
        start = pos
        if text.startswith("W/", pos):
            pos += 2
        if pos < len(text) and text[pos] == '"':
            end = text.find('"', pos + 1)
            if end < 0:
                return None
            pos = end + 1
        else:
            while pos < len(text) and text[pos] not in ' \t,"':
                pos += 1
        tag = text[start:pos]
        if tag in ("", "W/", "*"):
            return None
        tags.append(tag)
        while pos < len(text) and text[pos] in " \t":
            pos += 1
        if pos < len(text) and text[pos] != ",":
            return None
    return tags or None


def _field(headers: Headers, name: str) -> str | None:
    """All lines of a request field joined as one list value, or None if absent."""
    lines = headers.getall(name, [])
    return ", ".join(lines) if lines else None


def evaluate_preconditions(
    method: str, request_headers: Headers, etag: str | None, last_modified: float | None
) -> int | None:
    """304 or 412 when a precondition decides the answer, None to serve normally.

    Evaluated in the order of RFC 9110 13.2.2 against the stored representation
    (which exists, so "*" matches it). Range and If-Range are the caller's next step.
    """
    is_get_or_head = method.upper() in ("GET", "HEAD")
    if_match = _field(request_headers, "if-match")
    if if_match is not None:
        # Step 1: "When If-Match is present, evaluate the If-Match precondition:
        # if false, respond 412" — strong comparison (13.1.1).
        tags = parse_etag_list(if_match)
        if tags != ["*"] and not (
            tags is not None
            and etag is not None
            and any(etag_matches_strong(tag, etag) for tag in tags)
        ):
            return 412
    else:
        # Step 2: If-Unmodified-Since, only without If-Match; ignored when the date
        # is invalid or there is no Last-Modified to compare with (13.1.4).
        since = parse_http_date(request_headers.get("if-unmodified-since"))
        if since is not None and last_modified is not None and last_modified > since:
            return 412
    if_none_match = _field(request_headers, "if-none-match")
    if if_none_match is not None:
        # Step 3: If-None-Match, weak comparison (13.1.2); "if false for GET/HEAD,
        # respond 304 (Not Modified)", "if false for other methods, respond 412".
        tags = parse_etag_list(if_none_match)
        if tags is not None and (
            tags == ["*"] or (etag is not None and any(etag_matches_weak(t, etag) for t in tags))
        ):
            return 304 if is_get_or_head else 412
    elif is_get_or_head:
        # Step 4: If-Modified-Since, only for GET/HEAD without If-None-Match; ignored
        # when invalid, when it has more than one member, or with no Last-Modified.
        lines = request_headers.getall("if-modified-since", [])
        since = parse_http_date(lines[0]) if len(lines) == 1 else None
        if since is not None and last_modified is not None and last_modified <= since:
            return 304
    return None


def if_range_allows(if_range: str | None, etag: str | None, last_modified: float | None) -> bool:
    """Whether a Range request may be answered partially (RFC 9110 13.1.5).

    True without If-Range. An entity-tag must match the stored ETag strongly; a date
    must equal the stored Last-Modified exactly. Otherwise the whole body is sent.
    (RFC 9110 8.8.2.2 would also want Last-Modified a second older than Date for the
    date to be a strong validator; the caller may require that before calling.)
    """
    if if_range is None:
        return True
    value = if_range.strip(" \t")
    if value.startswith(('"', "W/")):
        return etag is not None and etag_matches_strong(value, etag)
    since = parse_http_date(value)
    return since is not None and last_modified is not None and since == last_modified
