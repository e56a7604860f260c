"""The client's pure parts, without a server: deadline arithmetic, error mapping, parsing."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

import baton
from baton import _core
from baton.errors import error_from_response


def body(code: str, message: str = "m", **extra) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}, **extra}).encode()


def test_the_margin_is_one_percent_plus_100ms():
    assert _core.drift_margin(30) == pytest.approx(0.4)
    assert _core.drift_margin(0) == pytest.approx(0.1)


def test_the_deadline_counts_from_the_send_and_never_precedes_it():
    # 29 s the server still granted, less 300 ms + 100 ms of margin (as the Rust client).
    assert _core.local_deadline(100.0, 29.0, 30.0) == pytest.approx(128.6)
    assert _core.local_deadline(100.0, 0.05, 30.0) == 100.0


def test_renewal_comes_at_a_third_of_the_ttl():
    assert _core.renewal_instant(0.0, 30.0, 30.0) == pytest.approx(10.0)
    assert _core.renewal_instant(0.0, 3.0, 30.0) == pytest.approx(1.0)


def test_backoff_doubles_is_capped_and_jittered():
    steps = [_core.exponential_step(0.1, 2.0, attempt) for attempt in range(1, 8)]
    assert steps == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0])
    policy = baton.RetryPolicy()
    for attempt in range(1, 8):
        step = _core.exponential_step(policy.backoff_initial, policy.backoff_max, attempt)
        for _ in range(20):
            assert step / 2 <= policy.backoff(attempt) <= step


@pytest.mark.parametrize("status, code, cls", [
    (410, "lease_lost", baton.LeaseLost),
    (410, "revoked", baton.LeaseLost),
    (409, "busy", baton.Busy),
    (404, "lease_not_found", baton.NotFound),
    (404, "ticket_not_found", baton.NotFound),
    (400, "invalid_ttl", baton.Rejected),
    (409, "capacity_conflict", baton.Rejected),
    (410, "ticket_lapsed", baton.Rejected),
    (401, "unauthorized", baton.Unauthorized),
    (403, "forbidden", baton.Forbidden),
    (503, "unavailable", baton.Unavailable),
    (503, "limit_reached", baton.Unavailable),
    (503, "not_active", baton.Unavailable),
    (429, "rate_limited", baton.RateLimited),
    (429, "quota_exceeded", baton.QuotaExceeded),
    (500, "internal", baton.ServerError),
    (418, "a_new_code", baton.Rejected),
])
def test_codes_map_to_the_exception_the_caller_acts_on(status, code, cls):
    error = error_from_response("u", status, body(code, "the message"))
    assert type(error) is cls
    assert error.code == code and error.message == "the message" and error.status == status
    assert error.retryable == isinstance(error, baton.Unavailable)


def test_a_quota_answer_names_the_quota_and_is_not_retried():
    text = json.dumps({"error": {"code": "quota_exceeded", "message": "at most 5"},
                       "quota": {"name": "waiters", "limit": 5}}).encode()
    error = error_from_response("u", 429, text)
    assert type(error) is baton.QuotaExceeded
    assert (error.quota, error.limit, error.retryable) == ("waiters", 5, False)


def test_busy_keeps_the_holders_and_revoked_is_told_apart():
    holders = [{"owner": "h/1", "token": 7, "since": "2024-01-01T00:00:00Z",
                "expires_at": "2024-01-01T00:00:30Z"}]
    busy = error_from_response("u", 409, body("busy", holders=holders))
    assert isinstance(busy, baton.Busy) and busy.holders[0]["token"] == 7
    assert error_from_response("u", 410, body("revoked")).revoked
    assert not error_from_response("u", 410, body("lease_lost")).revoked


def test_answers_without_an_error_body_map_by_status():
    assert isinstance(error_from_response("u", 502, b"<html>bad gateway</html>"),
                      baton.Unavailable)
    crash = error_from_response("u", 500, b"")
    assert isinstance(crash, baton.ServerError) and crash.code == "http_500"
    odd = error_from_response("http://x/v1/locks", 404, b"Not Found")
    assert isinstance(odd, baton.ProtocolError) and "http://x/v1/locks" in str(odd)
    assert len(str(error_from_response("u", 500, b"x" * 1000))) < 300


def test_retry_after_is_kept():
    limited = error_from_response("u", 429, body("rate_limited"), retry_after="2")
    assert isinstance(limited, baton.RateLimited) and limited.retry_after == 2.0


def test_timestamps_with_nanoseconds_and_offsets_parse():
    moment = baton.models.parse_timestamp("2026-12-04T02:49:47.123456789Z")
    assert moment == datetime(2026, 12, 4, 2, 49, 47, 123456, tzinfo=timezone.utc)
    assert baton.models.parse_timestamp("2026-12-04T04:49:47+02:00") == \
        datetime(2026, 12, 4, 2, 49, 47, tzinfo=timezone.utc)
    with pytest.raises(baton.ProtocolError):
        baton.models.parse_timestamp("yesterday")


def test_lock_names_become_one_path_segment_and_bad_ones_are_refused():
    assert _core.lock_path("team-a/deploy", "/acquire") == "/v1/locks/team-a%2Fdeploy/acquire"
    assert _core.lock_path("ci@host:job") == "/v1/locks/ci%40host%3Ajob"
    assert _core.id_path("leases", "abc/../def", "/renew") == "/v1/leases/abc%2F..%2Fdef/renew"
    for name in ["", ".", "..", "sp ace", "é", "a?b", "a" * 256]:
        with pytest.raises(baton.InvalidInput):
            _core.validate_lock_name(name)
    _core.validate_lock_name("x.y_z:1@host-2/" + "a" * 200)


def test_base_urls_are_split_checked_and_trimmed():
    bases = _core.parse_base_urls(" http://a:1/ , https://b/prefix/,,")
    assert [base.url for base in bases] == ["http://a:1", "https://b/prefix"]
    assert (bases[1].port, bases[1].prefix, bases[1].https) == (443, "/prefix", True)
    for urls in ["", " , ", "ftp://x", "http://x/?q=1", "nope", "http://x:port"]:
        with pytest.raises(baton.ConfigError):
            _core.parse_base_urls(urls)


def test_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("BATON_URL", "http://a:1,http://b:2")
    monkeypatch.setenv("BATON_API_KEY", "secret")
    monkeypatch.setenv("BATON_OWNER", "me")
    client = baton.Client()
    assert client.base_urls == ["http://a:1", "http://b:2"]
    assert client.settings.owner == "me"
    assert client.settings.headers(client.settings.bases[0], None)["Authorization"] == \
        "Bearer secret"
    assert "secret" not in repr(client.settings)
    monkeypatch.setenv("BATON_CA_FILE", "/nonexistent/ca.pem")
    with pytest.raises(baton.ConfigError):
        baton.Client()


def test_request_ids_are_fresh_128_bit_hex():
    first = _core.generate_request_id()
    assert len(first) == 32 and int(first, 16) >= 0 and first != _core.generate_request_id()


def test_owner_labels_name_host_user_and_pid():
    label = _core.default_owner()
    assert len(label.split("/")) >= 3
