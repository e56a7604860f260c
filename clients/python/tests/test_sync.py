"""The blocking client against a real ``baton server``."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import List

import pytest

import baton
from conftest import Server, baton_bin, eventually, free_port

SRC = str(Path(__file__).resolve().parent.parent / "src")


def read_counter(path: Path) -> int:
    text = path.read_text()
    return int(text) if text else 0


def test_a_lock_gives_a_lease_with_token_and_id_and_releases_it(server: Server, name: str):
    client = baton.Client(server.url)
    with client.lock(name, ttl=5) as lease:
        assert lease.token > 0
        assert lease.id.startswith("lease_")
        assert lease.lease.lock == name
        assert lease.deadline > time.monotonic()
        info = client.lock_info(name)
        assert [holder.token for holder in info.holders] == [lease.token]
        assert "lease_" not in repr(lease.lease), "the secret id stays out of repr"
    assert client.lock_info(name).holders == []
    entries = client.history(name).entries
    assert [(entry.token, entry.end) for entry in entries] == [(lease.token, "released")]
    assert any(item.name == name for item in client.locks())


def test_threads_never_overlap_on_a_shared_counter(server: Server, name: str, tmp_path: Path):
    counter = tmp_path / "counter"
    counter.write_text("0")
    threads, rounds = 4, 8
    errors: List[BaseException] = []

    def work() -> None:
        client = baton.Client(server.url)
        try:
            for _ in range(rounds):
                with client.lock(name, ttl=10):
                    value = read_counter(counter)
                    time.sleep(0.005)  # a lost update shows if two hold at once
                    counter.write_text(str(value + 1))
        except BaseException as error:  # reported below
            errors.append(error)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert not errors, errors
    assert read_counter(counter) == threads * rounds


def test_processes_never_overlap_on_a_shared_counter(server: Server, name: str, tmp_path: Path):
    counter = tmp_path / "counter"
    counter.write_text("0")
    script = (
        "import sys, time, baton\n"
        "from pathlib import Path\n"
        "counter = Path(sys.argv[1])\n"
        "for _ in range(int(sys.argv[2])):\n"
        "    with baton.lock(sys.argv[3], ttl=10) as lease:\n"
        "        value = int(counter.read_text() or 0)\n"
        "        time.sleep(0.005)\n"
        "        counter.write_text(str(value + 1))\n"
    )
    environment = dict(os.environ, PYTHONPATH=SRC, BATON_URL=server.url)
    processes, rounds = 3, 6
    children = [subprocess.Popen([sys.executable, "-c", script, str(counter), str(rounds), name],
                                 env=environment) for _ in range(processes)]
    for child in children:
        assert child.wait(timeout=120) == 0
    assert read_counter(counter) == processes * rounds


def test_waiters_are_granted_in_arrival_order(server: Server, name: str):
    client = baton.Client(server.url)
    order: List[str] = []
    holder = client.lock(name, ttl=10).acquire()
    waiters = []
    for index in range(4):
        label = f"w{index}"

        def wait(label: str = label) -> None:
            with baton.Client(server.url).lock(name, ttl=10, owner=label):
                order.append(label)

        thread = threading.Thread(target=wait)
        thread.start()
        waiters.append(thread)
        eventually(lambda: len(client.lock_info(name).waiters) == index + 1,
                   what=f"{label} to be queued")
    assert [waiter.owner for waiter in client.lock_info(name).waiters] == ["w0", "w1", "w2", "w3"]
    assert holder.release().released
    for thread in waiters:
        thread.join(timeout=60)
    assert order == ["w0", "w1", "w2", "w3"]


def test_fencing_tokens_increase_and_stale_ones_are_refused(server: Server, name: str):
    client = baton.Client(server.url)
    tokens = []
    for _ in range(4):
        with client.lock(name, ttl=5) as lease:
            tokens.append(lease.token)
    assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens)
    assert client.fence(name, tokens[-1]) == baton.FenceResult(True, tokens[-1])
    stale = client.fence(name, tokens[0])
    assert stale == baton.FenceResult(False, tokens[-1])


def test_the_guard_renews_a_short_lease_while_the_block_runs(server: Server, name: str):
    client = baton.Client(server.url)
    with client.lock(name, ttl=1) as lease:
        first_deadline = lease.deadline
        time.sleep(3.5)  # more than three ttls
        assert not lease.lost
        lease.check()
        assert lease.deadline > first_deadline
        assert [holder.token for holder in client.lock_info(name).holders] == [lease.token]
    assert client.history(name).entries[0].end == "released"


def test_a_revoked_lease_raises_lease_lost_when_the_block_exits(server: Server, name: str):
    client = baton.Client(server.url)
    with pytest.raises(baton.LeaseLost) as raised:
        with client.lock(name, ttl=1) as lease:
            assert client.revoke(name, lease.token).revoked
            assert lease.wait_lost(timeout=10), "the next renewal must learn of the revocation"
            with pytest.raises(baton.LeaseLost):
                lease.check()
    assert raised.value.reason == "revoked" and raised.value.revoked
    assert raised.value.code == "revoked"


def test_on_lost_is_called_instead_of_raising(server: Server, name: str):
    client = baton.Client(server.url)
    seen: List[baton.LeaseLost] = []
    with client.lock(name, ttl=1, on_lost=seen.append) as lease:
        client.revoke(name, lease.token)
        eventually(lambda: bool(seen), timeout=10, what="on_lost")
    assert seen[0].reason == "revoked"


@pytest.mark.parametrize("outage", ["killed", "paused"])
def test_an_unreachable_server_loses_the_lease_by_its_local_deadline(start_server, name: str,
                                                                     outage: str):
    own = start_server()
    client = baton.Client(own.url, retry=baton.RetryPolicy(attempts=1))
    with pytest.raises(baton.LeaseLost) as raised:
        with client.lock(name, ttl=2) as lease:
            deadline = lease.deadline
            # Killed: renewals are refused at once. Paused: they hang, and must not outlive
            # the deadline.
            if outage == "killed":
                own.kill()
            else:
                own.pause()
            try:
                assert lease.wait_lost(timeout=20)
                noticed = time.monotonic()
            finally:
                if outage == "paused":
                    own.resume()
    assert raised.value.reason == "deadline_exceeded"
    # Lost by the client's own clock (before the server could have let the lease go), and
    # close to the deadline, not a request timeout later.
    assert deadline <= noticed < deadline + 3.0


def test_a_timed_out_waiter_leaves_the_queue_at_once(server: Server, name: str):
    client = baton.Client(server.url)
    with client.lock(name, ttl=10):
        started = time.monotonic()
        with pytest.raises(baton.TimedOut):
            with client.lock(name, ttl=10, timeout=1):
                pytest.fail("granted while held")
        assert 0.9 < time.monotonic() - started < 10
        # The fixture's tickets lapse after 60 s: only the client's DELETE empties the queue.
        assert client.lock_info(name).waiters == []


def test_timeout_zero_tries_once_and_raises_busy_with_the_holders(server: Server, name: str):
    client = baton.Client(server.url)
    with client.lock(name, ttl=10) as lease:
        with pytest.raises(baton.Busy) as raised:
            client.lock(name, timeout=0).acquire()
        assert raised.value.code == "busy" and raised.value.status == 409
        assert [holder["token"] for holder in raised.value.holders] == [lease.token]
        assert client.lock_info(name).waiters == []


def test_an_interrupted_waiter_deletes_its_ticket(server: Server, name: str):
    client = baton.Client(server.url)
    script = (
        "import sys, baton\n"
        "try:\n"
        "    with baton.lock(sys.argv[1], ttl=10):\n"
        "        sys.exit(3)\n"
        "except KeyboardInterrupt:\n"
        "    sys.exit(4)\n"
    )
    environment = dict(os.environ, PYTHONPATH=SRC, BATON_URL=server.url)
    with client.lock(name, ttl=30):
        child = subprocess.Popen([sys.executable, "-c", script, name], env=environment)
        try:
            eventually(lambda: len(client.lock_info(name).waiters) == 1, what="the waiter")
            time.sleep(0.3)  # well inside its long-poll
            child.send_signal(signal.SIGINT)
            assert child.wait(timeout=30) == 4
        finally:
            if child.poll() is None:
                child.kill()
        # Tickets lapse after 60 s here: an empty queue now means the waiter said goodbye.
        assert client.lock_info(name).waiters == []


def test_a_retried_acquire_with_the_same_request_id_gets_the_same_lease(server: Server, name: str):
    client = baton.Client(server.url)
    first = client.acquire(name, ttl=5, request_id="py-retry-1")
    again = client.acquire(name, ttl=5, request_id="py-retry-1")
    assert isinstance(first, baton.Lease) and isinstance(again, baton.Lease)
    assert (first.id, first.token) == (again.id, again.token)
    assert client.renew(first.id).token == first.token
    assert client.release(first.id) == baton.ReleaseResult(True, None)
    again_release = client.release(first.id)
    assert not again_release.released and again_release.reason == "already_released"
    with pytest.raises(baton.LeaseLost):
        client.renew(first.id)


def test_queue_and_ticket_calls(server: Server, name: str):
    client = baton.Client(server.url)
    held = client.acquire(name, ttl=10)
    assert isinstance(held, baton.Lease)
    ticket = client.acquire(name, ttl=10, queue=True, wait=0.1, owner="queued")
    assert isinstance(ticket, baton.Ticket) and ticket.position == 1
    again = client.wait_ticket(ticket.id, wait=0.1)
    assert isinstance(again, baton.Ticket) and again.position == 1
    client.release(held.id)
    granted = client.wait_ticket(ticket.id, wait=10)
    assert isinstance(granted, baton.Lease) and granted.owner == "queued"
    assert granted.token > held.token
    client.release(granted.id)
    queued = client.acquire(name, queue=True, wait=0)
    assert isinstance(queued, baton.Lease)
    other = client.acquire(name, queue=True, wait=0)
    assert isinstance(other, baton.Ticket)
    assert client.cancel_ticket(other.id).cancelled
    with pytest.raises(baton.Rejected) as raised:
        client.wait_ticket(other.id, wait=0.1)
    assert raised.value.code == "ticket_cancelled"
    client.release(queued.id)


def test_server_error_codes_become_typed_exceptions(server: Server, name: str):
    client = baton.Client(server.url)
    with pytest.raises(baton.NotFound) as raised:
        client.renew("lease_" + "0" * 32)
    assert raised.value.code == "lease_not_found" and raised.value.status == 404
    with pytest.raises(baton.NotFound) as raised:
        client.lock_info(name)
    assert raised.value.code == "lock_not_found"
    with pytest.raises(baton.NotFound) as raised:
        client.job("job_" + "0" * 32)
    assert raised.value.code == "job_not_found"
    with client.lock(name, ttl=5, capacity=2):
        with pytest.raises(baton.Rejected) as raised:
            client.acquire(name, capacity=3)
        assert raised.value.code == "capacity_conflict" and raised.value.status == 409
    with pytest.raises(baton.Rejected) as raised:
        client.acquire(name, owner="bad\nowner")
    assert raised.value.code == "invalid_owner"
    with pytest.raises(baton.InvalidInput):
        client.lock_info("no spaces")
    with pytest.raises(baton.InvalidInput):
        client.acquire(name, ttl=0.1)


def test_fail_over_skips_a_dead_first_url(server: Server, name: str):
    dead = f"http://127.0.0.1:{free_port()}"
    client = baton.Client(f"{dead}, {server.url}")
    assert client.base_urls == [dead, server.url]
    with client.lock(name, ttl=5) as lease:
        assert lease.token > 0
        assert client.current_url == server.url
    with pytest.raises(baton.Unavailable) as raised:
        baton.Client([dead], retry=baton.RetryPolicy(attempts=2, backoff_initial=0.01)).locks()
    assert dead in str(raised.value)
    # Through the environment, as every baton tool reads it.
    os.environ["BATON_URL"] = f"{dead},{server.url}"
    try:
        with baton.lock(name, ttl=5) as lease:
            assert lease.token > 0
    finally:
        del os.environ["BATON_URL"]


def test_jobs_are_listed_and_read(server: Server, name: str):
    environment = dict(os.environ, BATON_URL=server.url)
    subprocess.run([baton_bin(), "run", name, "--", "sh", "-c", "echo hello from the job"],
                   env=environment, check=True, timeout=60, stdout=subprocess.DEVNULL)
    client = baton.Client(server.url)
    jobs = client.jobs(name=name)
    assert [job.state for job in jobs] == ["succeeded"]
    assert client.jobs(name=name, state=["failed", "lost"]) == []
    assert client.jobs(name=name, limit=1)[0].id == jobs[0].id
    detail = client.job(jobs[0].id)
    assert detail.job.exit_code == 0 and detail.job.finished and detail.job.token
    assert "hello from the job" in detail.output_tail


def make_key(grant: str, keys_file: Path) -> str:
    created = subprocess.run([baton_bin(), "keys", "create", "--offline", "--name",
                              re.sub(r"[^a-z]", "", grant) or "all", "--grant", grant],
                             check=True, capture_output=True, text=True, timeout=30)
    with keys_file.open("a") as out:
        out.write(created.stderr.split("\n", 1)[1] if created.stderr.startswith("#")
                  else created.stderr)
    return created.stdout.strip()


def test_api_keys_are_sent_and_refusals_are_typed(start_server, name: str, tmp_path: Path):
    keys_file = tmp_path / "keys.toml"
    admin = make_key("admin:", keys_file)
    reader = make_key("read:", keys_file)
    own = start_server(["--keys-file", str(keys_file)])
    with pytest.raises(baton.Unauthorized) as raised:
        baton.Client(own.url, api_key="").locks()
    assert raised.value.code == "unauthorized" and raised.value.status == 401
    with pytest.raises(baton.Unauthorized):
        baton.Client(own.url, api_key="baton_" + "0" * 64).locks()
    with pytest.raises(baton.Forbidden) as raised:
        baton.Client(own.url, api_key=reader).acquire(name)
    assert raised.value.code == "forbidden" and isinstance(raised.value, baton.AuthError)
    with baton.Client(own.url, api_key=admin).lock(name, ttl=5) as lease:
        assert [holder.token for holder in
                baton.Client(own.url, api_key=reader).lock_info(name).holders] == [lease.token]
    os.environ["BATON_API_KEY"] = admin
    try:
        with baton.lock(name, ttl=5, url=own.url) as lease:
            assert lease.token > 0
    finally:
        del os.environ["BATON_API_KEY"]
    with pytest.raises(baton.ConfigError):
        baton.Client(own.url, api_key="bad key")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_tls_with_a_ca_file(start_server, name: str, tmp_path: Path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                    "-addext", "basicConstraints=critical,CA:FALSE",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    own = start_server(["--tls-cert", str(cert), "--tls-key", str(key)], scheme="https")
    with baton.Client(own.url, ca_file=str(cert)).lock(name, ttl=5) as lease:
        assert lease.token > 0
    with pytest.raises(baton.TlsError) as raised:
        baton.Client(own.url, ca_file="").locks()
    assert "BATON_CA_FILE" in str(raised.value)
    with pytest.raises(baton.ConfigError):
        baton.Client(own.url, ca_file=str(tmp_path / "missing.pem"))

    async def over_asyncio() -> None:
        async with baton.AsyncClient(own.url, ca_file=str(cert)).lock(name, ttl=5) as lease:
            assert lease.token > 0
        with pytest.raises(baton.TlsError):
            await baton.AsyncClient(own.url, ca_file="").locks()

    asyncio.run(asyncio.wait_for(over_asyncio(), timeout=60))


def test_the_error_table_matches_the_servers():
    proto = Path(__file__).resolve().parents[3] / "crates" / "baton-proto" / "src" / "lib.rs"
    if not proto.exists():
        pytest.skip("not inside the baton repository")
    codes = dict(re.findall(r'^\s*[A-Za-z]+ = \("([a-z_]+)", (\d{3})\),$', proto.read_text(),
                            re.MULTILINE))
    assert codes, "the error_codes! table was not found"
    assert {code: int(status) for code, status in codes.items()} == baton.ERROR_CODES
