"""The one wire schema of a purge: round trips, and the API's log form meets the node's."""

from __future__ import annotations

import json
import tempfile

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.cache.purge import PurgeRecord as NodeRecord
from fleet.config import Service
from purge_api.body import parse_purge_body
from purge_api.log import PurgeLog
from runtime.purge_wire import PurgeRecord, PurgeRequest

SERVICE = Service(name="site", hosts=("www.example.com",), origins=("http://127.0.0.1:9",))

#: what a client may put in a path or a tag: no spaces or controls of any kind
visible = st.characters(
    min_codepoint=33, max_codepoint=0x2FFF, blacklist_categories=("Zs", "Zl", "Zp", "Cc", "Cs")
)
paths = st.text(visible, max_size=12).map(lambda s: "/" + s.lstrip("/"))
locations = paths | paths.map(lambda p: "https://www.example.com" + p)
tags = st.text(visible, min_size=1, max_size=12)
requests = st.builds(
    PurgeRequest,
    urls=st.lists(locations, max_size=3).map(tuple),
    prefixes=st.lists(locations, max_size=3).map(tuple),
    tags=st.lists(tags, max_size=3).map(tuple),
    all=st.booleans(),
    soft=st.booleans(),
).filter(lambda r: r.item_count > 0 or r.all)
records = st.builds(
    PurgeRecord.of,
    st.integers(min_value=0, max_value=2**63 - 1),
    st.text(max_size=40),
    st.text(max_size=20),
    requests,
    st.floats(min_value=0, max_value=4e9, allow_nan=False),
)


def test_the_node_and_the_api_share_one_record_type() -> None:
    assert NodeRecord is PurgeRecord


@given(records)
def test_a_record_survives_the_wire(record: PurgeRecord) -> None:
    wire = json.loads(json.dumps(record.to_json()))
    assert PurgeRecord.from_json(wire) == record
    assert set(wire) == {
        "seq", "id", "service", "urls", "prefixes", "tags", "all", "soft", "accepted_at"
    }  # fmt: skip


@given(requests)
def test_a_request_survives_the_log_form(request: PurgeRequest) -> None:
    assert PurgeRequest.from_json(json.loads(json.dumps(request.to_json()))) == request


@given(requests, st.booleans())
def test_what_a_client_posts_is_what_a_node_takes(request: PurgeRequest, idem: bool) -> None:
    # the API's side: a client body checked, logged in SQLite, read back for a push;
    # the node's side: the push's JSON parsed by the record type its intake uses
    body = json.dumps(request.to_json()).encode()
    parsed = parse_purge_body(body, SERVICE, max_items=100)
    assert parsed == request
    with tempfile.TemporaryDirectory() as data_dir:
        log = PurgeLog(data_dir)
        try:
            logged, _ = log.append("site", parsed, "ci", "k" if idem else None, 12.5)
            (pushed,) = log.since(0, 10, logged.seq)
            wire = json.loads(json.dumps({"records": [pushed.to_wire()]}))
        finally:
            log.close()
    taken = NodeRecord.from_json(wire["records"][0])
    assert taken == PurgeRecord.of(logged.seq, logged.id, "site", request, 12.5)
    assert taken.request == request


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"urls": "/a"}, "'urls'"),
        ({"prefixes": [1]}, "'prefixes'"),
        ({"all": 1}, "'all'"),
        ("[]", "object"),
    ],
)
def test_a_bad_request_form_names_the_field(data: object, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        PurgeRequest.from_json(data)
