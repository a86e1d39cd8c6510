"""The REST contract against the real purge API process: every error and its message."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from fleet.config import Fleet, load_fleet
from tests.purge_api.harness import AUTH, api_call, api_url, start_api, write_fleet
from tests.support.processes import NodeProcess

OTHER_TOKEN = "other-token-for-the-other-service"
OTHER_SERVICE = """
[[services]]
name = "other"
hosts = ["other.example.org"]
origins = ["http://127.0.0.1:9"]
"""


def _fleet(root: Path, purge_api_extra: str = "") -> Fleet:
    digest = hashlib.sha256(OTHER_TOKEN.encode()).hexdigest()
    fleet = write_fleet(
        root, shields=0, edges=0, purge_api_extra=purge_api_extra, extra=OTHER_SERVICE
    )
    # a second token, scoped to the other service only
    text = Path(fleet.source).read_text()
    text = text.replace(
        'services = ["site"] }]',
        f'services = ["site"] }}, {{ name = "other-ci", sha256 = "{digest}", '
        'services = ["other"] }]',
    )
    Path(fleet.source).write_text(text)
    return load_fleet(fleet.source)


@pytest.fixture
def api(tmp_path: Path, processes: list[NodeProcess]) -> str:
    fleet = _fleet(tmp_path, "max_items = 5")
    start_api(fleet, tmp_path, processes)
    return api_url(fleet)


async def test_purge_without_token_is_401(api: str) -> None:
    status, body, _ = await api_call("POST", f"{api}/v1/services/site/purge", json={"all": True})
    assert status == 401
    assert "Authorization: Bearer" in body["error"]


async def test_purge_with_unknown_token_is_401(api: str) -> None:
    status, body, _ = await api_call(
        "POST",
        f"{api}/v1/services/site/purge",
        headers={"Authorization": "Bearer nope"},
        json={"all": True},
    )
    assert status == 401
    assert "unknown token" in body["error"]


async def test_unknown_service_is_404(api: str) -> None:
    status, body, _ = await api_call(
        "POST", f"{api}/v1/services/nope/purge", headers=AUTH, json={"all": True}
    )
    assert (status, body["error"]) == (404, "no service named 'nope'")


async def test_token_not_scoped_to_the_service_is_403(api: str) -> None:
    status, body, _ = await api_call(
        "POST", f"{api}/v1/services/other/purge", headers=AUTH, json={"all": True}
    )
    assert status == 403
    assert body["error"] == "token 'ci' may not purge service 'other'"


async def test_a_purge_of_another_service_is_hidden_from_a_token_without_it(api: str) -> None:
    other = {"Authorization": f"Bearer {OTHER_TOKEN}"}
    status, body, _ = await api_call(
        "POST", f"{api}/v1/services/other/purge", headers=other, json={"tags": ["x"]}
    )
    assert status == 200  # no nodes in this fleet: complete at once
    status, answer, _ = await api_call("GET", f"{api}/v1/purges/{body['id']}", headers=AUTH)
    assert status == 403
    assert "may not see purges of 'other'" in answer["error"]


@pytest.mark.parametrize(
    ("payload", "field", "words"),
    [
        (b"{not json", "body", "not valid JSON"),
        (b"[1, 2]", "body", "expected a JSON object"),
        (b"{}", "body", "nothing to purge"),
        (b'{"url": ["/a"]}', "url", "not a known field"),
        (b'{"urls": "/a"}', "urls", "expected a list of strings"),
        (b'{"urls": ["/a", 7]}', "urls[1]", "expected a non-empty string"),
        (b'{"urls": ["https://evil.example.net/a"]}', "urls[0]", "not a host of service 'site'"),
        (b'{"urls": ["ftp://www.example.com/a"]}', "urls[0]", "absolute http(s) URL"),
        (b'{"prefixes": ["img/"]}', "prefixes[0]", "a path starting with /"),
        (b'{"tags": ["two words"]}', "tags[0]", "no spaces"),
        (b'{"tags": ["a"], "soft": "yes"}', "soft", "expected true or false"),
        (b'{"all": 1}', "all", "expected true or false"),
    ],
)
async def test_malformed_body_is_400_naming_the_field(
    api: str, payload: bytes, field: str, words: str
) -> None:
    status, body, _ = await api_call(
        "POST",
        f"{api}/v1/services/site/purge",
        headers={**AUTH, "Content-Type": "application/json"},
        data=payload,
    )
    assert status == 400
    assert body["field"] == field
    assert body["error"].startswith(f"{field}: ")
    assert words in body["error"]


async def test_bad_wait_is_400(api: str) -> None:
    status, body, _ = await api_call(
        "POST", f"{api}/v1/services/site/purge?wait=soon", headers=AUTH, json={"all": True}
    )
    assert (status, body["field"]) == (400, "wait")
    assert "'soon' is not a number" in body["error"]


async def test_too_many_items_is_413(api: str) -> None:
    payload = {"urls": ["/a", "/b"], "prefixes": ["/p/"], "tags": ["x", "y", "z"]}
    status, body, _ = await api_call(
        "POST", f"{api}/v1/services/site/purge", headers=AUTH, json=payload
    )
    assert status == 413
    assert body["error"] == "too many items: 6 urls, prefixes and tags; at most 5"


async def test_oversized_body_is_413(api: str) -> None:
    payload = b'{"tags": ["' + b"x" * (5 * 1024 * 1024) + b'"]}'
    status, body, _ = await api_call(
        "POST",
        f"{api}/v1/services/site/purge",
        headers={**AUTH, "Content-Type": "application/json"},
        data=payload,
    )
    assert status == 413
    assert "body too large" in body["error"]


async def test_unknown_purge_id_is_404(api: str) -> None:
    status, body, _ = await api_call("GET", f"{api}/v1/purges/abc", headers=AUTH)
    assert (status, body["error"]) == (404, "no purge with id 'abc'")


async def test_node_pull_without_the_node_secret_is_401(api: str) -> None:
    status, body, _ = await api_call("GET", f"{api}/v1/nodes/edge1/purges?since=0", headers=AUTH)
    assert (status, body["error"]) == (401, "missing or wrong node secret")


async def test_accepted_purge_with_no_nodes_is_complete(api: str) -> None:
    status, body, headers = await api_call(
        "POST",
        f"{api}/v1/services/site/purge",
        headers=AUTH,
        json={"urls": ["https://www.example.com/a", "/b"], "soft": True},
    )
    assert status == 200
    assert (body["status"], body["nodes"], body["seq"]) == ("complete", {}, 1)
    assert headers["Location"] == f"/v1/purges/{body['id']}"
    status, health, _ = await api_call("GET", f"{api}/healthz")
    assert (status, health["head"]) == (200, 1)


async def test_rate_limit_per_token_is_429(tmp_path: Path, processes: list[NodeProcess]) -> None:
    fleet = _fleet(tmp_path, "rate_limit_per_minute = 3")
    start_api(fleet, tmp_path, processes)
    url = f"{api_url(fleet)}/v1/services/site/purge"
    statuses = [
        (await api_call("POST", url, headers=AUTH, json={"tags": [f"t{i}"]}))[0] for i in range(3)
    ]
    assert statuses == [200, 200, 200]
    status, body, headers = await api_call("POST", url, headers=AUTH, json={"tags": ["t"]})
    assert status == 429
    assert body["error"] == "too many purges for token 'ci': at most 3 a minute"
    assert int(headers["Retry-After"]) >= 1
    # another token has its own budget
    other = {"Authorization": f"Bearer {OTHER_TOKEN}"}
    status, _, _ = await api_call(
        "POST", f"{api_url(fleet)}/v1/services/other/purge", headers=other, json={"all": True}
    )
    assert status == 200
