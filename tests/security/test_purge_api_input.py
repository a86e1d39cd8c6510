"""Hostile input to a running purge API: every bad input gets a short 4xx naming the field.

One real `edgeshield purge-api` process for the module (its fleet names one edge that
never runs, so purges stay pending); requests go over raw sockets so that bytes a
client library would refuse (not UTF-8, lone surrogates, absurd lengths) reach it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.support.fleetfile import TEST_NODE_SECRET, TEST_TOKEN
from tests.support.purge_api_input import Answer, PurgeApi, post, raw_exchange, running_purge_api


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PurgeApi]:
    yield from running_purge_api(tmp_path_factory.mktemp("purge-input"))


def refused(answer: Answer, status: int, field: str) -> str:
    """Assert a short JSON error of `status` naming `field`; its message."""
    assert answer.status == status, (answer.status, answer.body[:300])
    assert len(answer.body) < 600, answer.body[:300]
    data = answer.json()
    assert data["field"] == field, data
    return str(data["error"])


async def test_an_idempotency_key_reused_for_a_different_purge_is_422(api: PurgeApi) -> None:
    key = {"Idempotency-Key": "deploy-42", "Content-Type": "application/json"}
    first = await raw_exchange(api.address, post(b'{"urls": ["/a"]}', headers=key))
    assert first.status in (200, 202)
    again = await raw_exchange(api.address, post(b'{ "urls" : ["/a"] }', headers=key))
    assert again.status in (200, 202)
    assert again.headers.get("idempotent-replayed") == "true"
    assert again.json()["id"] == first.json()["id"]

    head = await log_head(api)

    other = await raw_exchange(api.address, post(b'{"urls": ["/b"]}', headers=key))
    message = refused(other, 422, "Idempotency-Key")
    assert "'deploy-42'" in message and first.json()["id"] in message
    soft = await raw_exchange(api.address, post(b'{"urls": ["/a"], "soft": true}', headers=key))
    refused(soft, 422, "Idempotency-Key")
    assert await log_head(api) == head, "a refused call was logged"


async def log_head(api: PurgeApi) -> int:
    """The purge log's last sequence number."""
    answer = await raw_exchange(api.address, b"GET /healthz HTTP/1.1\r\nHost: api\r\n\r\n")
    return int(answer.json()["head"])


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"[" * 100_000, id="list-nesting"),
        pytest.param(b'{"urls": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", id="nested-in-field"),
        pytest.param(b'{"a":' * 50_000 + b"1" + b"}" * 50_000, id="object-nesting"),
    ],
)
async def test_deeply_nested_json_is_400(api: PurgeApi, body: bytes) -> None:
    message = refused(await raw_exchange(api.address, post(body)), 400, "body")
    assert "nested too deeply" in message


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        (b"\xff\xfe{}", "body", "not UTF-8"),
        (b'{"urls": ["/a\xc3"]}', "body", "not UTF-8"),
        (b'{"urls": [' + b"9" * 5000 + b"]}", "body", "not usable JSON"),
        (b'{"urls": ["/\\ud800"]}', "urls[0]", "not valid Unicode"),
        (b'{"tags": ["\\udfff"]}', "tags[0]", "valid Unicode"),
        (b'{"urls": [1]}', "urls[0]", "expected a non-empty string"),
        (b'{"urls": [1e999]}', "urls[0]", "expected a non-empty string"),
        (b'{"tags": 5}', "tags", "expected a list of strings"),
        (b'{"prefixes": {"a": 1}}', "prefixes", "expected a list of strings"),
        (b'{"all": 1}', "all", "expected true or false"),
        (b'{"all": null}', "all", "expected true or false"),
        (b'"just a string"', "body", "expected a JSON object"),
        (b"NaN", "body", "expected a JSON object"),
    ],
)
async def test_bad_bodies_are_400_naming_the_field(
    api: PurgeApi, body: bytes, field: str, words: str
) -> None:
    message = refused(await raw_exchange(api.address, post(body)), 400, field)
    assert words in message


async def test_a_long_unknown_field_is_named_but_not_echoed_whole(api: PurgeApi) -> None:
    name = "x" * 20_000
    answer = await raw_exchange(api.address, post(json.dumps({name: 1}).encode()))
    assert answer.status == 400 and len(answer.body) < 600
    assert answer.json()["field"] == "x" * 64


async def test_a_foreign_host_is_quoted_short(api: PurgeApi) -> None:
    url = "http://" + "h" * 5000 + ".example/"
    answer = await raw_exchange(api.address, post(json.dumps({"urls": [url]}).encode()))
    assert "is not a host of service" in refused(answer, 400, "urls[0]")


async def test_a_huge_array_is_413(api: PurgeApi) -> None:
    body = json.dumps({"tags": ["t"] * 500_000}).encode()
    answer = await raw_exchange(api.address, post(body))
    assert answer.status == 413 and b"too many items" in answer.body


async def test_a_huge_array_of_numbers_is_400(api: PurgeApi) -> None:
    body = json.dumps({"urls": list(range(500_000))}).encode()
    refused(await raw_exchange(api.address, post(body)), 400, "urls[0]")


async def test_a_chunked_body_over_the_limit_is_413(api: PurgeApi) -> None:
    chunk = b'{"tags": ["' + b"x" * (1024 * 1024)
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(5)) + b"0\r\n\r\n"
    request = (
        b"POST /v1/services/site/purge HTTP/1.1\r\nHost: api\r\n"
        + f"Authorization: Bearer {TEST_TOKEN}\r\n".encode()
        + b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        + chunks
    )
    try:
        answer = await raw_exchange(api.address, request)
    except ConnectionError:
        pytest.fail("the API closed the connection instead of answering 413")
    assert answer.status == 413


@pytest.mark.parametrize("content_type", ["application/xml", "multipart/form-data; boundary=x"])
async def test_a_body_that_says_it_is_not_json_is_415(api: PurgeApi, content_type: str) -> None:
    answer = await raw_exchange(
        api.address, post(b'{"all": true}', headers={"Content-Type": content_type})
    )
    refused(answer, 415, "Content-Type")


@pytest.mark.parametrize(
    "content_type",
    ["application/json; charset=utf-8", "application/merge-patch+json", "text/plain"],
)
async def test_json_content_types_are_taken(api: PurgeApi, content_type: str) -> None:
    answer = await raw_exchange(
        api.address, post(b'{"tags": ["ct"]}', headers={"Content-Type": content_type})
    )
    assert answer.status in (200, 202), answer.body[:300]


@pytest.mark.parametrize(
    "raw_key",
    [
        b"Idempotency-Key: \xff\xfe\r\n",
        b"Idempotency-Key: caf\xc3\xa9\r\n",
        b"Idempotency-Key: " + b"k" * 300 + b"\r\n",
    ],
)
async def test_a_bad_idempotency_key_is_400(api: PurgeApi, raw_key: bytes) -> None:
    answer = await raw_exchange(api.address, post(b'{"all": true}', raw_headers=raw_key))
    refused(answer, 400, "Idempotency-Key")


async def test_a_token_that_is_not_utf8_is_401(api: PurgeApi) -> None:
    request = (
        b"POST /v1/services/site/purge HTTP/1.1\r\nHost: api\r\n"
        b"Authorization: Bearer \xff\xfe\xfd\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
    )
    answer = await raw_exchange(api.address, request)
    assert answer.status == 401


@pytest.mark.parametrize(
    "path",
    [
        "/v1/purges/%ff%fe",
        "/v1/purges/" + "a" * 4000,
        "/v1/purges/%ed%a0%80",
        "/v1/services/" + "s" * 4000 + "/purge",
    ],
)
async def test_odd_ids_and_services_are_404_and_short(api: PurgeApi, path: str) -> None:
    method = "POST" if path.endswith("/purge") else "GET"
    request = (
        f"{method} {path} HTTP/1.1\r\nHost: api\r\nAuthorization: Bearer {TEST_TOKEN}\r\n"
        "Content-Length: 0\r\nConnection: close\r\n\r\n"
    ).encode()
    answer = await raw_exchange(api.address, request)
    assert answer.status == 404 and len(answer.body) < 300, answer.body[:300]


@pytest.mark.parametrize(
    "query", ["since=" + "9" * 40, "since=" + "9" * 5000, "since=-1", "limit=x", "since=1.5"]
)
async def test_a_node_pull_with_absurd_numbers_is_400(api: PurgeApi, query: str) -> None:
    request = (
        f"GET /v1/nodes/edge1/purges?{query} HTTP/1.1\r\nHost: api\r\n"
        f"Authorization: Bearer {TEST_NODE_SECRET}\r\nConnection: close\r\n\r\n"
    ).encode()
    refused(await raw_exchange(api.address, request), 400, "since")


@pytest.mark.parametrize(
    "junk",
    [
        b"POST /v1/" + b"\x01" * 6000 + b" HTTP/1.1\r\nHost: api\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: api\r\nContent-Length: zz" + b"9" * 5000 + b"\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: api\r\nX: " + b"A" * 9000 + b"\r\n\r\n",
    ],
    ids=["bad-target", "bad-length", "long-field"],
)
async def test_a_head_the_parser_refuses_gets_a_short_answer_that_echoes_nothing(
    api: PurgeApi, junk: bytes
) -> None:
    answer = await raw_exchange(api.address, junk)
    assert answer.status == 400
    assert len(answer.body) < 100, answer.body[:200]
    assert b"\x01" not in answer.body and b"999" not in answer.body and b"AAA" not in answer.body
