"""The compiled rules: the matcher, each action, origin-group choice, the rate limiter.

Pure: rules come from a fleet file's text, requests are values, time is an argument.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict

from edge.cache.directives import effective_directives
from edge.cache.rules import (
    NO_REQUEST_PLAN,
    NO_RESPONSE_PLAN,
    CompiledRules,
    RateLimiter,
    Request,
    apply_response_plan,
    choose_group,
    cookie_value,
    in_networks,
    key_suffix,
    limit_key,
    redirect_location,
    retry_after,
    rewrite_request_headers,
    rule_path,
)
from fleet.config import parse_fleet
from fleet.rules import OriginGroup, parse_duration, parse_rate

BASE = """
[[services]]
name = "www"
hosts = ["www.example.com", "example.com"]
origins = ["http://127.0.0.1:8080"]
"""


def rules(extra: str) -> CompiledRules:
    return CompiledRules(parse_fleet(BASE + extra, "t.toml").services[0].traffic)


def request(
    target: str = "/",
    method: str = "GET",
    host: str = "www.example.com",
    **headers: str,
) -> Request:
    path, query = rule_path(target)
    fields = CIMultiDict((k.replace("_", "-"), v) for k, v in headers.items())
    return Request(method, host, path, query, fields)


def test_no_rules_cost_nothing_per_request() -> None:
    compiled = rules("")
    assert not compiled.per_request and not compiled.per_response
    assert compiled.on_request(request()) is NO_REQUEST_PLAN
    assert compiled.on_response(request()) is NO_RESPONSE_PLAN


def test_each_match_condition_and_their_conjunction() -> None:
    compiled = rules(
        """
[[services.rules]]
respond = { status = 403 }
[services.rules.match]
path_prefix = "/admin"
methods = ["GET", "POST"]
hosts = ["www.example.com"]
header = { name = "User-Agent", value_regex = "(?i)bot" }
query_param = "debug"
path_regex = "/admin/[a-z]+$"
"""
    )
    hit = request("/admin/panel?debug=1&x=2", user_agent="SomeBot/1")
    assert compiled.on_request(hit).respond is not None
    misses = [
        request("/admin/panel?debug=1", method="PUT", user_agent="bot"),
        request("/admin/panel?debug=1", host="example.com", user_agent="bot"),
        request("/admin/panel?debug=1", user_agent="curl"),
        request("/admin/panel?debugger=1", user_agent="bot"),
        request("/admin/panel7?debug=1", user_agent="bot"),
        request("/public/x?debug=1", user_agent="bot"),
        request("/admin/panel?debug=1"),
    ]
    for miss in misses:
        assert compiled.on_request(miss) is NO_REQUEST_PLAN, miss


def test_paths_are_normalised_before_matching_so_escapes_do_not_dodge_a_rule() -> None:
    compiled = rules(
        '[[services.rules]]\nmatch = { path_prefix = "/admin" }\nrespond = { status = 403 }'
    )
    for target in ("/%61dmin", "/x/../admin", "/./admin/y", "//admin", "/.//admin"):
        assert compiled.on_request(request(target)).respond is not None, target


def test_candidate_tables_per_method_stay_bounded() -> None:
    compiled = rules('[[services.rules]]\nmatch = { path_prefix = "/a/" }\nbypass_cache = true')
    for i in range(5000):
        compiled.on_request(request("/a/x", method=f"M{i}"))
    assert len(compiled._request._by_method) <= 1024
    assert compiled.on_request(request("/a/x")).bypass_cache


def test_first_match_wins_per_action_kind() -> None:
    compiled = rules(
        """
[[services.rules]]
match = { path_prefix = "/a/" }
ttl = 10
[[services.rules]]
match = { path_prefix = "/a/b/" }
ttl = 20
set_response_headers = { "X-Rule" = "two" }
bypass_cache = true
[[services.rules]]
set_response_headers = { "X-Rule" = "three" }
"""
    )
    plan = compiled.on_response(request("/a/b/c"))
    assert plan.ttl == 10
    assert plan.set_response_headers == (("X-Rule", "two"),)
    assert compiled.on_response(request("/z")).set_response_headers == (("X-Rule", "three"),)
    assert compiled.on_request(request("/a/b/c")).bypass_cache is True
    assert compiled.on_request(request("/a/c")) is NO_REQUEST_PLAN


def test_a_ttl_override_makes_an_uncacheable_answer_cacheable_for_this_cdn_only() -> None:
    compiled = rules('[[services.rules]]\nttl = "1h"\nstale_if_error = 60')
    pairs = (("Cache-Control", "no-store"), ("Surrogate-Control", "max-age=1"), ("X", "y"))
    stored = apply_response_plan(compiled.on_response(request()), pairs)
    headers = CIMultiDict(stored)
    directives, source = effective_directives(headers)
    assert source == "edgeshield-cdn-cache-control"
    assert directives.max_age == 3600 and not directives.no_store
    assert headers["Cache-Control"] == "no-store"  # what clients still see
    assert "Surrogate-Control" not in headers


def test_stale_windows_alone_extend_the_origins_lifetime() -> None:
    compiled = rules("[[services.rules]]\nstale_while_revalidate = 30")
    stored = apply_response_plan(compiled.on_response(request()), (("Cache-Control", "max-age=5"),))
    assert stored == (("Cache-Control", "max-age=5, stale-while-revalidate=30"),)


def test_response_headers_set_and_removed() -> None:
    compiled = rules(
        '[[services.rules]]\nset_response_headers = { "X-Frame-Options" = "DENY" }\n'
        'remove_response_headers = ["Server", "x-powered-by"]'
    )
    pairs = (("Server", "nginx"), ("X-Powered-By", "php"), ("x-frame-options", "ALLOW"), ("A", "b"))
    stored = apply_response_plan(compiled.on_response(request()), pairs)
    assert stored == (("A", "b"), ("X-Frame-Options", "DENY"))


def test_request_headers_set_and_removed() -> None:
    compiled = rules(
        '[[services.rules]]\nset_request_headers = { "X-Cdn" = "1" }\n'
        'remove_request_headers = ["Cookie"]'
    )
    plan = compiled.on_request(request())
    assert plan.rewrites_request
    pairs = (("Cookie", "a=1"), ("x-cdn", "spoofed"), ("Accept", "*/*"))
    assert rewrite_request_headers(plan, pairs) == (("Accept", "*/*"), ("X-Cdn", "1"))


def test_redirect_location_substitutes_host_path_and_query() -> None:
    compiled = rules(
        '[[services.rules]]\nredirect = { to = "https://$host/new$path$query", status = 302 }'
    )
    req = request("/a/b?x=1")
    redirect = compiled.on_request(req).redirect
    assert redirect is not None and redirect.status == 302
    assert redirect_location(redirect, req.host, req.path, req.query) == (
        "https://www.example.com/new/a/b?x=1"
    )
    assert redirect_location(redirect, "h", "/p", "") == "https://h/new/p"


def test_cache_key_includes_named_headers_and_cookies() -> None:
    compiled = rules(
        '[[services.rules]]\ncache_key = { ignore_query = true, include_headers = ["X-Device"], '
        'include_cookies = ["ab"] }'
    )
    plan = compiled.on_request(request())
    assert plan.cache_key is not None and plan.cache_key.ignore_query
    one = key_suffix(plan.cache_key, CIMultiDict({"X-Device": "m", "Cookie": "x=1; ab=b"}))
    two = key_suffix(plan.cache_key, CIMultiDict({"X-Device": "d", "Cookie": "ab=b"}))
    three = key_suffix(plan.cache_key, CIMultiDict({"X-Device": "m", "Cookie": "ab=b"}))
    assert one != two and one == three


def test_cookie_value() -> None:
    headers = CIMultiDict([("Cookie", "a=1; b = 2"), ("Cookie", "c=3; a=9")])
    assert cookie_value(headers, "a") == "1"
    assert cookie_value(headers, "b") == "2" and cookie_value(headers, "c") == "3"
    assert cookie_value(headers, "d") is None


GROUPS = """
[[services.origin_groups]]
name = "main"
origins = ["http://127.0.0.1:1"]
weight = 90
[[services.origin_groups]]
name = "canary"
origins = ["http://127.0.0.1:2"]
weight = 10
[[services.origin_groups]]
name = "green"
origins = ["http://127.0.0.1:3"]
match = { header = "X-Deploy", value = "green" }
[[services.origin_groups]]
name = "beta"
origins = ["http://127.0.0.1:4"]
match = { cookie = "release", value = "beta" }
"""


def all_healthy(group: OriginGroup) -> bool:
    return True


def test_the_weighted_split_follows_the_weights() -> None:
    compiled = rules(GROUPS)
    picks = [
        choose_group(compiled, None, CIMultiDict(), i / 1000, all_healthy) for i in range(1000)
    ]
    names = [g.name if g else None for g in picks]
    assert names.count("main") == 900 and names.count("canary") == 100


def test_a_pinned_client_goes_to_its_group_by_header_or_cookie() -> None:
    compiled = rules(GROUPS)
    green = choose_group(compiled, None, CIMultiDict({"X-Deploy": "green"}), 0.99, all_healthy)
    beta = choose_group(compiled, None, CIMultiDict({"Cookie": "release=beta"}), 0.0, all_healthy)
    other = choose_group(compiled, None, CIMultiDict({"X-Deploy": "blue"}), 0.0, all_healthy)
    assert (green and green.name, beta and beta.name, other and other.name) == (
        "green",
        "beta",
        "main",
    )


def test_an_unhealthy_groups_share_goes_to_the_others() -> None:
    compiled = rules(GROUPS)

    def canary_down(group: OriginGroup) -> bool:
        return group.name != "canary"

    picks = {
        g.name
        for i in range(100)
        if (g := choose_group(compiled, None, CIMultiDict(), i / 100, canary_down))
    }
    assert picks == {"main"}
    pinned = choose_group(
        compiled, None, CIMultiDict({"X-Deploy": "green"}), 0.5, lambda g: g.name != "green"
    )
    assert pinned is not None and pinned.name == "main"
    nobody = choose_group(compiled, None, CIMultiDict(), 0.95, lambda g: False)
    assert nobody is not None and nobody.name == "canary"


def test_a_rules_origin_group_comes_first_and_no_groups_means_the_service_origins() -> None:
    compiled = rules(
        GROUPS + '[[services.rules]]\nmatch = { path_prefix = "/beta" }\norigin_group = "canary"'
    )
    plan = compiled.on_request(request("/beta/x"))
    chosen = choose_group(compiled, plan.origin_group, CIMultiDict(), 0.0, all_healthy)
    assert chosen is not None and chosen.name == "canary"
    assert choose_group(rules(""), None, CIMultiDict(), 0.5, all_healthy) is None


LIMIT = """
[[services.rate_limits]]
match = { path_prefix = "/api/" }
key = "client_ip"
rate = "10/s"
burst = 5
"""


def test_rate_limit_allows_the_burst_then_the_rate_and_recovers() -> None:
    compiled = rules(LIMIT)
    plan = compiled.on_request(request("/api/x"))
    assert compiled.on_request(request("/other")) is NO_REQUEST_PLAN
    (limit,) = plan.rate_limits
    limiter = RateLimiter()
    now = 1000.0
    assert [limiter.take(limit, "1.2.3.4", now) for _ in range(5)] == [0.0] * 5
    wait = limiter.take(limit, "1.2.3.4", now)
    assert abs(wait - 0.1) < 1e-9 and retry_after(wait) == 1
    assert limiter.take(limit, "5.6.7.8", now) == 0.0  # another client has its own bucket
    # over one second at 10/s: ten more, not eleven
    allowed = sum(limiter.take(limit, "1.2.3.4", now + i / 100) == 0.0 for i in range(1, 101))
    assert allowed == 10
    assert limiter.take(limit, "1.2.3.4", now + 60) == 0.0  # recovered


def test_rate_limiter_stays_bounded() -> None:
    compiled = rules(LIMIT)
    (limit,) = compiled.on_request(request("/api/")).rate_limits
    limiter = RateLimiter(max_buckets=100)
    for i in range(1000):
        limiter.take(limit, f"10.0.{i // 256}.{i % 256}", 1000.0 + i)
    assert len(limiter) <= 100


def test_limit_keys() -> None:
    compiled = rules(
        LIMIT
        + '[[services.rate_limits]]\nkey = "header:X-Key"\nrate = "1/s"\n'
        + '[[services.rate_limits]]\nkey = "cookie:sid"\nrate = "1/s"\n'
    )
    by_ip, by_header, by_cookie = compiled.on_request(request("/api/")).rate_limits
    headers = CIMultiDict({"X-Key": "k1", "Cookie": "sid=s1"})
    assert limit_key(by_ip, "1.2.3.4", headers) == "1.2.3.4"
    assert limit_key(by_header, "1.2.3.4", headers) == "k1"
    assert limit_key(by_cookie, "1.2.3.4", headers) == "s1"


def test_in_networks() -> None:
    import ipaddress

    nets = [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1/128")]
    assert in_networks("10.1.2.3", nets) and in_networks("::1", nets)
    assert not in_networks("11.0.0.1", nets) and not in_networks(None, nets)
    assert not in_networks("not-an-ip", nets)


@given(st.text(max_size=60))
def test_durations_and_rates_parse_or_raise_value_error(text: str) -> None:
    for parse in (parse_duration, parse_rate):
        try:
            value = parse(text)
        except ValueError:
            continue
        assert value >= 0


@given(
    st.text(alphabet="/a.%2F6d?&=-_~", max_size=40),
    st.sampled_from(["GET", "POST", "PURGE", "x"]),
    st.text(max_size=20),
)
def test_the_matcher_answers_any_request_without_raising(
    target: str, method: str, agent: str
) -> None:
    compiled = rules(
        '[[services.rules]]\nmatch = { path_prefix = "/a/", query_param = "x" }\nttl = 5\n'
        '[[services.rules]]\nmatch = { path_regex = "%", header = { name = "User-Agent", '
        'value_regex = "b" } }\nrespond = { status = 403 }\n'
        '[[services.rules]]\nmatch = { path_prefix = "/a", methods = ["POST"] }\n'
        "bypass_cache = true\n"
    )
    path, query = rule_path("/" + target)
    assert path.startswith("/") and "//" not in path
    req = Request(method, "www.example.com", path, query, CIMultiDict({"User-Agent": agent}))
    plan = compiled.on_request(req)
    assert plan.bypass_cache == (method == "POST" and path.startswith("/a"))
    compiled.on_response(req)
