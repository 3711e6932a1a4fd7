"""API keys of the service: hashed storage, constant-time checks, scopes, revocation, audit log, ``mvector keys``."""

from __future__ import annotations

import hashlib
import json
import threading

import pytest

from mvector.cli.keys import main as keys_main
from mvector.errors import ConfigError
from mvector.service import keys as keys_module
from mvector.service.keys import SCOPES, KeyStore, KeyStoreError, scope_allows


def test_only_a_hash_of_each_key_is_stored(tmp_path):
    with KeyStore(tmp_path) as store:
        info, token = store.create("admin", name="ops")
        assert store.authenticate(token).key_id == info.key_id
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("service.sqlite*"))
    secret = token.split("_", 2)[2]
    assert token.encode() not in stored and secret.encode() not in stored
    assert hashlib.sha256(token.encode()).hexdigest().encode() in stored


def test_authentication_refuses_wrong_malformed_and_revoked_keys(tmp_path):
    with KeyStore(tmp_path) as store:
        info, token = store.create("read")
        other_info, other = store.create("write")
        assert store.authenticate(token) == info and store.authenticate(other) == other_info
        forged = token[:-1] + ("A" if token[-1] != "A" else "B")  # right id, wrong secret
        for bad in (forged, token + "x", token.upper(), "", None, 42, "Bearer " + token, token[:20]):
            assert store.authenticate(bad) is None, bad
        assert store.revoke(info.key_id).active is False
        assert store.authenticate(token) is None and store.authenticate(other) == other_info
        assert store.revoke(info.key_id).active is False  # twice is harmless
        assert store.revoke(other).active is False  # a whole key pasted instead of its id
        assert store.list(include_revoked=False) == []


def test_the_comparison_is_constant_time_even_for_an_unknown_id(tmp_path, monkeypatch):
    calls = []
    real = keys_module.hmac.compare_digest

    def spy(a, b):
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(keys_module.hmac, "compare_digest", spy)
    with KeyStore(tmp_path) as store:
        _, token = store.create("read")
        store.authenticate(token)
        store.authenticate("mvk_ffffffffffff_" + "A" * 43)  # no such id
        store.authenticate("garbage")
    assert calls == [(64, 64)] * 3  # the same work every time: one digest comparison of two SHA-256 hex strings


def test_scopes_are_cumulative():
    allowed = {(g, n): scope_allows(g, n) for g in SCOPES for n in SCOPES}
    assert allowed == {
        ("read", "read"): True, ("read", "write"): False, ("read", "admin"): False,
        ("write", "read"): True, ("write", "write"): True, ("write", "admin"): False,
        ("admin", "read"): True, ("admin", "write"): True, ("admin", "admin"): True,
    }  # fmt: skip


@pytest.mark.parametrize(
    "scope, name, message",
    [("root", "", "scope must be one of read, write, admin"), ("read", "a\nb", "control characters"),
     ("read", "x" * 101, "at most 100"), ("read", 5, "must be a string")],
)  # fmt: skip
def test_bad_scope_or_name_is_a_clear_error(tmp_path, scope, name, message):
    with KeyStore(tmp_path) as store:
        with pytest.raises(KeyStoreError, match=message):
            store.create(scope, name)
        assert store.list() == []


def test_unknown_key_id_and_missing_store(tmp_path):
    with KeyStore(tmp_path) as store:
        with pytest.raises(KeyStoreError, match="no API key with id 'abc'"):
            store.revoke("abc")
    with pytest.raises(KeyStoreError, match="mvector keys create"):
        KeyStore(tmp_path / "elsewhere", create=False)
    assert not (tmp_path / "elsewhere").exists()


def test_audit_log_newest_first_with_filters(tmp_path):
    with KeyStore(tmp_path) as store:
        info, _ = store.create("write", name="kiosk")
        for i in range(5):
            store.audit(info, "enrol", f"spk{i}", 201, client="10.0.0.1")
        store.audit(info, "delete", "spk0", 200)
        store.audit(None, "enrol", "x" * 500, 401)
        log = store.audit_log(limit=3, outcome="all")
        assert [(e.action, e.status) for e in log] == [("enrol", 401), ("delete", 200), ("enrol", 201)]
        assert log[0].key_id is None and len(log[0].target) == 200
        enrols = store.audit_log(action="enrol", outcome="all")
        assert [e.target for e in enrols][1:] == [f"spk{i}" for i in reversed(range(5))]
        assert enrols[1].key_name == "kiosk" and enrols[1].client == "10.0.0.1"
        assert enrols[1].as_dict()["time"].endswith("Z")
        with pytest.raises(ConfigError, match="limit"):
            store.audit_log(limit=0)


def test_keys_created_from_many_threads_are_all_distinct(tmp_path):
    tokens: list[str] = []

    def make(store: KeyStore) -> None:
        for _ in range(5):
            tokens.append(store.create("read")[1])

    with KeyStore(tmp_path) as first, KeyStore(tmp_path) as second:  # two connections, as two processes would have
        threads = [threading.Thread(target=make, args=(s,)) for s in (first, second, first, second)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(set(tokens)) == 20 and len(first.list()) == 20
        assert all(second.authenticate(t) is not None for t in tokens)


def test_keys_command_line(tmp_path, capsys):
    db = str(tmp_path / "db")
    assert keys_main(["list", "--audio_db_path", db]) == 2
    assert "error: " in capsys.readouterr().err and not (tmp_path / "db").exists()

    assert keys_main(["create", "--audio_db_path", db, "--scope", "admin", "--name", "ops"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    token = out[-1]
    with KeyStore(db) as store:
        info = store.authenticate(token)
    assert info.scope == "admin" and info.name == "ops" and info.created_by == "cli"

    assert keys_main(["list", "--audio_db_path", db]) == 0
    listing = capsys.readouterr().out
    assert info.key_id in listing and "admin" in listing and token not in listing
    assert keys_main(["revoke", "--audio_db_path", db, info.key_id]) == 0
    assert f"revoked key {info.key_id}" in capsys.readouterr().out
    assert keys_main(["list", "--audio_db_path", db, "--json"]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[0])
    assert row["key_id"] == info.key_id and row["active"] is False and row["revoked"].endswith("Z")
    assert keys_main(["list", "--audio_db_path", db, "--active"]) == 0
    assert capsys.readouterr().out.strip() == "(no keys)"
    assert keys_main(["revoke", "--audio_db_path", db, "nope"]) == 2
    assert "no API key with id 'nope'" in capsys.readouterr().err
    assert keys_main(["audit", "--audio_db_path", db, "--json"]) == 0
    with pytest.raises(SystemExit) as exc:
        keys_main(["create", "--audio_db_path", db, "--scope", "superuser"])
    assert exc.value.code == 2
