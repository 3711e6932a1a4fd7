"""Load test of ``mvector serve`` on loopback: concurrent verify/identify clients while others enrol, then a crash.

Phase "steady": ``--readers`` threads each send ``--reads`` requests (verify two recordings, identify top-3, verify
against an enrolled speaker, in turn) while ``--writers`` threads each enrol ``--enrols`` new speakers (one or two
recordings each). Reports throughput, latency percentiles (p50/p99) per kind, and errors (goal: none). Afterwards
every acknowledged enrolment must be in the database exactly once with the right number of recordings, the audit
log must hold it, and ``PRAGMA integrity_check`` must say ok for both SQLite files.

Phase "crash": the same load on a fresh database, but the server is killed with SIGKILL once half of the
enrolments are acknowledged, and restarted on the same port; clients wait for it and go on (a writer whose request
died retries it: a 409 then means the enrolment had been committed before the kill). Afterwards no acknowledged
enrolment may be missing.

Phase "attack" (issue 20): the steady load again on a fresh database, while attackers from the same address run
beside it: keyless and wrong-key ``POST /v1/keys`` with a 3 GB ``Content-Length`` streaming zeros, chunked bodies
past the cap, 22 kB FLAC bombs (8 channels x 48 kHz x 59 s) sent to ``/v1/verify`` with a read key of their own,
forged ``DELETE /v1/speakers/x%0A...%1B[2J`` with that key (refused, then rate-limited), spoofed
``X-Forwarded-For``, and slowloris connections that never finish their headers. Reports the normal clients' p99
and error count with the attack (against the steady phase's), what the attackers got, the server's RSS (start,
peak, end), and checks that no acknowledged enrolment is lost and no forged address or raw control character
reached the audit log.

Baseline, measured in the same run: the steady phase's requests (same kinds, same recordings) as direct
``MVectorPredictor`` calls in this process, one after another (no HTTP, no queue, no concurrency):
``throughput_ratio_vs_in_process`` is the service's request rate over it.

    python benchmarks/bench_service.py                      # tiny untrained TDNN, ~2-3 minutes on 2 cores
    python benchmarks/bench_service.py --ecapa_channels 512 --reads 15 --enrols 10  # a real model's compute
    python benchmarks/bench_service.py --model_path models/EcapaTdnn_Fbank/best_model --readers 8

Everything runs on 127.0.0.1; the request counts and a wall-clock limit (``--time_limit``) bound the run.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import io
import select
import socket
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from common import add_repo_to_path, emit, machine_info

add_repo_to_path()

import httpx  # noqa: E402
import soundfile  # noqa: E402

from mvector.data.synthetic import make_voices, synthesize_utterance  # noqa: E402
from mvector.demo import tiny_checkpoint  # noqa: E402
from mvector.service.keys import KeyStore  # noqa: E402
from mvector.service.process import ServerProcess, wait_for_health  # noqa: E402


def _clip(voice, seconds: float, seed: int) -> bytes:
    buf = io.BytesIO()
    soundfile.write(buf, synthesize_utterance(voice, seconds, rng=np.random.default_rng(seed)), 16000, format="WAV")
    return buf.getvalue()


def _untrained_ecapa(folder: Path, channels: int) -> Path:
    """An untrained ECAPA-TDNN checkpoint folder of the bundled config (80-dim Fbank, 192-d embeddings): the
    compute of a real model, for latency figures (its scores mean nothing)."""
    import json

    import torch

    from mvector.build import build_embedding_model
    from mvector.checkpoint import save_checkpoint
    from mvector.config import load_config
    from mvector.models import build_head

    conf = load_config("ecapa_tdnn", overrides={"model_conf.channels": channels, "dataset_conf.num_speakers": 4})
    torch.manual_seed(0)
    model = build_embedding_model(conf)
    path = save_checkpoint(
        folder / "best_model",
        model_state=model.backbone.state_dict(),
        head_state=build_head("AAM", model.backbone.embd_dim, 4).state_dict(),
        config=conf,
        epoch=0,
        step=0,
        best_eer=None,
    )
    (path / "result.json").write_text(json.dumps({"threshold": 0.5}), encoding="utf-8")
    return path


def _percentiles(values: list[float]) -> dict[str, float | int]:
    if not values:
        return {"count": 0}
    ms = np.asarray(values) * 1000
    return {
        "count": len(values),
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p99_ms": round(float(np.percentile(ms, 99)), 1),
        "max_ms": round(float(ms.max()), 1),
    }


class Load:
    """The clients of one phase and what they saw."""

    def __init__(self, url: str, key: str, clips: list[bytes], args: argparse.Namespace, prefix: str) -> None:
        self.url, self.key, self.clips, self.args, self.prefix = url, key, clips, args, prefix
        self.latency: dict[str, list[float]] = {"verify": [], "identify": [], "verify_speaker": [], "enrol": []}
        self.errors: list[str] = []
        self.connection_failures = 0
        self.retried_503 = 0
        self.acknowledged: dict[str, int] = {}  # name -> recordings, for every 201 (or 409 on a retry)
        self.unacknowledged: list[str] = []
        self.lock = threading.Lock()
        self.deadline = time.monotonic() + args.time_limit
        self.enrolled = 0
        self.on_enrolled: threading.Event | None = None
        self.enrolments_total = args.writers * args.enrols

    def _request(self, client: httpx.Client, kind: str, method: str, path: str, **kw) -> tuple:
        """One request, retried while the server is down or starting (connection errors, 503).

        Returns ``(response or None past the deadline, whether a connection error forced a retry)``; the latency
        recorded is the last attempt's.
        """
        lost = False
        while time.monotonic() < self.deadline:
            started = time.perf_counter()
            try:
                resp = client.request(method, path, **kw)
            except httpx.TransportError:
                with self.lock:
                    self.connection_failures += 1
                lost = True
                time.sleep(0.2)
                continue
            if resp.status_code == 503:
                with self.lock:
                    self.retried_503 += 1
                time.sleep(min(5.0, float(resp.headers.get("Retry-After", "1"))))
                continue
            with self.lock:
                self.latency[kind].append(time.perf_counter() - started)
            return resp, lost
        return None, lost

    def reader(self, index: int) -> None:
        headers = {"Authorization": f"Bearer {self.key}"}
        kinds = ("verify", "identify", "verify_speaker")
        with httpx.Client(base_url=self.url, headers=headers, timeout=120) as client:
            for i in range(self.args.reads):
                a = self.clips[(index + i) % len(self.clips)]
                b = self.clips[(index + 2 * i + 1) % len(self.clips)]
                kind = kinds[(index + i) % 3]
                if kind == "verify":
                    resp, _ = self._request(client, kind, "POST", "/v1/verify", files={"audio1": a, "audio2": b})
                elif kind == "identify":
                    resp, _ = self._request(client, kind, "POST", "/v1/identify?top_k=3", content=a)
                else:
                    resp, _ = self._request(client, kind, "POST", f"/v1/speakers/seed{i % 4}/verify", content=a)
                if resp is None:
                    return
                if resp.status_code != 200:
                    with self.lock:
                        self.errors.append(f"{kind} {resp.status_code} {resp.text[:120]}")

    def writer(self, index: int) -> None:
        headers = {"Authorization": f"Bearer {self.key}"}
        with httpx.Client(base_url=self.url, headers=headers, timeout=120) as client:
            for i in range(self.args.enrols):
                name = f"{self.prefix}w{index}-{i}"
                count = 1 + (i % 2)
                picks = [self.clips[(index * 7 + i + j) % len(self.clips)] for j in range(count)]
                files = [("audio", (f"{j}.wav", clip)) for j, clip in enumerate(picks)]
                resp, retried = self._request(client, "enrol", "POST", "/v1/speakers", data={"name": name}, files=files)
                if resp is None:
                    with self.lock:
                        self.unacknowledged.append(name)
                    return
                with self.lock:
                    if resp.status_code == 201 or (retried and resp.status_code == 409):
                        self.acknowledged[name] = count
                        self.enrolled += 1
                        if self.on_enrolled is not None and self.enrolled >= self.enrolments_total // 2:
                            self.on_enrolled.set()
                    else:
                        self.errors.append(f"enrol {resp.status_code} {resp.text[:120]}")

    def run(self) -> float:
        threads = [threading.Thread(target=self.reader, args=(i,)) for i in range(self.args.readers)]
        threads += [threading.Thread(target=self.writer, args=(i,)) for i in range(self.args.writers)]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return time.perf_counter() - started

    def summary(self, seconds: float) -> dict:
        done = sum(len(v) for v in self.latency.values())
        return {
            "seconds": round(seconds, 2),
            "requests": done,
            "throughput_rps": round(done / seconds, 2),
            "latency": {k: _percentiles(v) for k, v in self.latency.items()},
            "errors": len(self.errors),
            "error_examples": self.errors[:5],
            "connection_failures": self.connection_failures,
            "retried_503": self.retried_503,
        }


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _bomb_flac() -> bytes:
    """22 kB of FLAC: 8 channels x 48 kHz x 59 s of silence (90 MB as float32 if decoded whole)."""
    buf = io.BytesIO()
    soundfile.write(buf, np.zeros((48000 * 59, 8), dtype=np.float32), 48000, format="FLAC")
    return buf.getvalue()


class Attack:
    """Attackers beside the normal load (see the module docstring); ``stop`` ends them. Counts answers by kind."""

    def __init__(self, host: str, port: int, keys: tuple[str, str], slowloris: int, bombers: int) -> None:
        self.host, self.port = host, port
        self.read_key, self.forger_key = keys  # bombs with one read key; forged deletes (rate-limited) with another
        self.slowloris, self.bombers = slowloris, bombers
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.answers: dict[str, dict[str, int]] = {}
        self.slowloris_dropped = 0

    def _count(self, kind: str, status: object) -> None:
        with self.lock:
            bucket = self.answers.setdefault(kind, {})
            bucket[str(status)] = bucket.get(str(status), 0) + 1

    def _raw(self, kind: str, head: bytes, chunk: bytes, seconds: float = 3.0) -> None:
        """Send ``head`` then ``chunk`` repeatedly until the server answers (or ``seconds``); count the status."""
        try:
            with socket.create_connection((self.host, self.port), timeout=5) as sock:
                sock.sendall(head)
                start, got = time.monotonic(), b""
                while time.monotonic() - start < seconds and not self.stop.is_set():
                    readable, writable, _ = select.select([sock], [sock], [], 0.2)
                    if readable:
                        data = sock.recv(65536)
                        got += data
                        if not data or b"\r\n" in got:
                            break
                    elif writable:
                        sock.send(chunk)
                self._count(kind, got.split(b" ", 2)[1].decode() if got.startswith(b"HTTP/") else "no answer")
        except OSError as err:
            self._count(kind, type(err).__name__)

    def flooder(self) -> None:
        wrong = "mvk_000000000000_" + "A" * 43
        zeros = b"\0" * 65536
        chunk = b"10000\r\n" + zeros + b"\r\n"
        while not self.stop.is_set():
            for auth, kind in (("", "keyless_3GB"), (f"Authorization: Bearer {wrong}\r\n", "wrong_key_3GB")):
                head = (
                    "POST /v1/keys HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    f"Content-Length: 3000000000\r\n{auth}\r\n"
                ).encode()
                self._raw(kind, head, zeros)
            head = (
                f"POST /v1/embed HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {self.read_key}\r\n"
                "Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
            ).encode()
            self._raw("chunked_past_cap", head, chunk)

    def bomber(self) -> None:
        bomb = _bomb_flac()
        headers = {"Authorization": f"Bearer {self.read_key}", "X-Forwarded-For": "6.6.6.6"}
        with httpx.Client(base_url=f"http://{self.host}:{self.port}", headers=headers, timeout=120) as client:
            while not self.stop.is_set():
                try:
                    self._count(
                        "flac_bomb_verify",
                        client.post("/v1/verify", files={"audio1": bomb, "audio2": bomb}).status_code,
                    )
                except httpx.HTTPError as err:
                    self._count("flac_bomb_verify", type(err).__name__)

    def forger(self) -> None:
        headers = {"Authorization": f"Bearer {self.forger_key}", "X-Forwarded-For": "6.6.6.6"}
        forged = "/v1/speakers/x%0A2026-01-01T00:00:00.000Z%20forged%1B[2J"
        with httpx.Client(base_url=f"http://{self.host}:{self.port}", headers=headers, timeout=120) as client:
            while not self.stop.is_set():
                try:
                    self._count("forged_delete", client.delete(forged).status_code)
                except httpx.HTTPError as err:
                    self._count("forged_delete", type(err).__name__)

    def slow_client(self) -> None:
        """One slowloris connection at a time: a header line every 2 s, never the blank line; reconnect when dropped."""
        while not self.stop.is_set():
            try:
                with socket.create_connection((self.host, self.port), timeout=5) as sock:
                    sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
                    while not self.stop.is_set():
                        readable, _, _ = select.select([sock], [], [], 2.0)
                        if readable:
                            sock.recv(4096)
                            with self.lock:
                                self.slowloris_dropped += 1
                            break
                        sock.sendall(b"X-Slow: 1\r\n")
            except OSError:
                with self.lock:
                    self.slowloris_dropped += 1
                time.sleep(0.1)

    def threads(self) -> list[threading.Thread]:
        out = [threading.Thread(target=self.flooder, daemon=True), threading.Thread(target=self.forger, daemon=True)]
        out += [threading.Thread(target=self.bomber, daemon=True) for _ in range(self.bombers)]
        out += [threading.Thread(target=self.slow_client, daemon=True) for _ in range(self.slowloris)]
        return out


def _audit_is_clean(db: Path) -> dict:
    """No forged client address and no raw control character anywhere in the audit log; refusals aggregated."""
    conn = sqlite3.connect(str(db / "service.sqlite"))
    try:
        rows = conn.execute("SELECT key_name, action, target, detail, client, status, count FROM audit").fetchall()
    finally:
        conn.close()
    texts = [str(v) for r in rows for v in r[:5] if v is not None]
    return {
        "rows": len(rows),
        "refused_rows": sum(1 for r in rows if r[5] >= 400),
        "refusals_counted": sum(r[6] for r in rows if r[5] >= 400),
        "forged_client_stored": any(r[4] == "6.6.6.6" for r in rows),
        "raw_control_characters": sum(1 for t in texts for c in t if ord(c) < 32 or 0x7F <= ord(c) < 0xA0),
    }


def _check_database(db: Path, model_path: Path, acknowledged: dict[str, int]) -> dict:
    """Every acknowledged enrolment present exactly once with its recordings; both SQLite files intact."""
    conn = sqlite3.connect(str(db / "speakers.sqlite"))
    try:
        integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
        rows = conn.execute(
            "SELECT s.name, s.n_utts, (SELECT COUNT(*) FROM utterances u WHERE u.speaker_id = s.id) FROM speakers s"
        ).fetchall()
    finally:
        conn.close()
    names = [r[0] for r in rows]
    stored = {r[0]: (r[1], r[2]) for r in rows}
    missing = [n for n in acknowledged if n not in stored]
    wrong = [n for n, c in acknowledged.items() if n in stored and stored[n] != (c, c)]
    duplicates = len(names) - len(set(names))
    service = sqlite3.connect(str(db / "service.sqlite"))
    try:
        service_integrity = service.execute("PRAGMA integrity_check").fetchone()[0]
        audited = {r[0] for r in service.execute("SELECT target FROM audit WHERE action = 'enrol' AND status = 201")}
    finally:
        service.close()
    return {
        "acknowledged": len(acknowledged),
        "missing": len(missing),
        "missing_examples": missing[:5],
        "wrong_recording_count": len(wrong),
        "duplicate_names": duplicates,
        "audited_enrolments_missing": len([n for n in acknowledged if n not in audited]),
        "integrity_check": integrity,
        "service_integrity_check": service_integrity,
        "all_present_once": not missing and not wrong and duplicates == 0,
    }


def _seed_speakers(url: str, key: str, clips: list[bytes]) -> None:
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
        for i in range(4):
            resp = client.post("/v1/speakers", data={"name": f"seed{i}"}, files={"audio": clips[i]})
            resp.raise_for_status()


def _baseline(model_path: Path, clips: list[bytes], args: argparse.Namespace) -> dict:
    """The steady phase's requests (same kinds, same recordings) as direct predictor calls, one after another."""
    import torch

    from mvector.inference.predictor import MVectorPredictor

    torch.set_num_threads(args.threads)  # the server's model thread uses the same number
    with MVectorPredictor(model_path, audio_db_path=tempfile.mkdtemp(), use_gpu=False) as p:
        for i in range(4):
            p.register(f"seed{i}", clips[i])
        p.contrast(clips[0], clips[1])  # warm-up
        started = time.perf_counter()
        count = 0
        for index in range(args.readers):
            for i in range(args.reads):
                a = clips[(index + i) % len(clips)]
                b = clips[(index + 2 * i + 1) % len(clips)]
                kind = ("verify", "identify", "verify_speaker")[(index + i) % 3]
                if kind == "verify":
                    p.contrast(a, b)
                elif kind == "identify":  # as the service does for top_k > 1: the decision with the candidates
                    p.recognize(a, candidates=3)
                else:
                    p.similarity(p.embed(a), p.db.mean_embedding(f"seed{i % 4}"))
                count += 1
        for index in range(args.writers):
            for i in range(args.enrols):
                picks = [clips[(index * 7 + i + j) % len(clips)] for j in range(1 + i % 2)]
                p.register(f"b{index}-{i}", picks)
                count += 1
        seconds = time.perf_counter() - started
    return {"requests": count, "seconds": round(seconds, 2), "throughput_rps": round(count / seconds, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--model_path", default=None, help="model folder (default: a tiny untrained TDNN)")
    parser.add_argument(
        "--ecapa_channels", type=int, default=0, help="without --model_path: an untrained ECAPA-TDNN of this width"
    )
    parser.add_argument("--readers", type=int, default=6, help="verify/identify client threads")
    parser.add_argument("--reads", type=int, default=30, help="requests per reader")
    parser.add_argument("--writers", type=int, default=2, help="enrolling client threads")
    parser.add_argument("--enrols", type=int, default=20, help="enrolments per writer")
    parser.add_argument("--seconds", type=float, default=2.0, help="length of each test recording")
    parser.add_argument("--time_limit", type=float, default=300.0, help="wall-clock bound of each phase (s)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the server's model (and baseline)")
    parser.add_argument("--no_crash", action="store_true", help="skip the SIGKILL phase")
    parser.add_argument("--no_attack", action="store_true", help="skip the attack phase")
    parser.add_argument("--bombers", type=int, default=2, help="attack: threads sending FLAC bombs to /v1/verify")
    parser.add_argument("--slowloris", type=int, default=20, help="attack: slowloris connections held at once")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="bench_service_"))
    if args.model_path:
        model_path, model_name = Path(args.model_path), str(args.model_path)
    elif args.ecapa_channels:
        model_path = _untrained_ecapa(work / "model", args.ecapa_channels)
        model_name = f"untrained ECAPA-TDNN, {args.ecapa_channels} channels, 80-dim Fbank, 192-d embeddings"
    else:
        model_path, model_name = tiny_checkpoint(work / "model"), "tiny untrained TDNN (mvector.demo.tiny_checkpoint)"
    voices = make_voices(12, seed=5)
    clips = [_clip(v, args.seconds, seed=i) for i, v in enumerate(voices)]
    report: dict = {
        "benchmark": "service",
        "machine": machine_info(),
        "config": {k: v for k, v in vars(args).items()},
        "model": model_name,
    }
    before = _baseline(model_path, clips, args)
    serve_args = ["--max_queue", "256", "--threads", str(args.threads)]

    # ---------------------------------------------------------------- steady load
    db = work / "steady_db"
    with KeyStore(db) as store:
        _, key = store.create("write", name="bench")
    server = ServerProcess(model_path, db, extra_args=serve_args, log_path=work / "steady.log").start()
    try:
        _seed_speakers(server.url, key, clips)
        load = Load(server.url, key, clips, args, prefix="s")
        seconds = load.run()
    finally:
        status = server.stop()
    steady = load.summary(seconds)
    steady["graceful_stop_status"] = status
    steady["database"] = _check_database(db, model_path, load.acknowledged)
    report["steady"] = steady

    # ---------------------------------------------------------------- SIGKILL mid-way, restart
    if not args.no_crash:
        db = work / "crash_db"
        with KeyStore(db) as store:
            _, key = store.create("write", name="bench")
        server = ServerProcess(model_path, db, extra_args=serve_args, log_path=work / "crash.log").start()
        _seed_speakers(server.url, key, clips)
        load = Load(server.url, key, clips, args, prefix="c")
        load.on_enrolled = threading.Event()
        crash: dict = {}

        def killer() -> None:
            if not load.on_enrolled.wait(args.time_limit):
                return
            crash["acknowledged_before_kill"] = len(load.acknowledged)
            server.kill()
            killed = time.perf_counter()
            server.start(wait=False)
            wait_for_health(server.url, 120, server.proc)
            crash["restart_seconds"] = round(time.perf_counter() - killed, 2)

        thread = threading.Thread(target=killer)
        thread.start()
        try:
            seconds = load.run()
            thread.join()
        finally:
            status = server.stop()
        summary = load.summary(seconds)
        summary.update(crash)
        summary["graceful_stop_status"] = status
        summary["unacknowledged"] = len(load.unacknowledged)
        summary["database"] = _check_database(db, model_path, load.acknowledged)
        report["crash"] = summary

    # ---------------------------------------------------------------- the same load under attack
    if not args.no_attack:
        db = work / "attack_db"
        with KeyStore(db) as store:
            _, key = store.create("write", name="bench")
            attacker_keys = (store.create("read", name="bomber")[1], store.create("read", name="forger")[1])
        server = ServerProcess(model_path, db, extra_args=serve_args, log_path=work / "attack.log").start()
        _seed_speakers(server.url, key, clips)
        attack = Attack(server.host, server.port, attacker_keys, args.slowloris, args.bombers)
        rss = {"start_mb": round(_rss_mb(server.proc.pid), 1)}
        peak = [rss["start_mb"]]

        def sample() -> None:
            while not attack.stop.is_set():
                peak.append(_rss_mb(server.proc.pid))
                time.sleep(0.2)

        attackers = [*attack.threads(), threading.Thread(target=sample, daemon=True)]
        for t in attackers:
            t.start()
        time.sleep(2.0)  # let the attack take hold before the normal clients start
        try:
            load = Load(server.url, key, clips, args, prefix="a")
            seconds = load.run()
        finally:
            attack.stop.set()
            for t in attackers:
                t.join(15)
            rss["peak_mb"] = round(max(peak), 1)
            rss["end_mb"] = round(_rss_mb(server.proc.pid), 1)
            status = server.stop()
        under = load.summary(seconds)
        under["graceful_stop_status"] = status
        under["database"] = _check_database(db, model_path, load.acknowledged)
        under["attackers"] = {"answers": attack.answers, "slowloris_connections_dropped": attack.slowloris_dropped}
        under["server_rss"] = rss
        under["audit"] = _audit_is_clean(db)
        steady_p99 = {k: v.get("p99_ms") for k, v in report["steady"]["latency"].items()}
        attack_p99 = {k: v.get("p99_ms") for k, v in under["latency"].items()}
        under["p99_ratio_vs_steady"] = {
            k: round(attack_p99[k] / steady_p99[k], 2) for k in steady_p99 if steady_p99[k] and attack_p99.get(k)
        }
        report["attack"] = under

    # the baseline again at the end: on a shared machine the load changes during the run; the ratio uses the mean
    after = _baseline(model_path, clips, args)
    mean_rps = (before["throughput_rps"] + after["throughput_rps"]) / 2
    report["baseline_in_process"] = {"before": before, "after": after, "mean_throughput_rps": round(mean_rps, 2)}
    report["throughput_ratio_vs_in_process"] = round(report["steady"]["throughput_rps"] / mean_rps, 3)
    report["load_average_at_end"] = machine_info(["load_average"])["load_average"]
    emit(report)
    ok = report["steady"]["database"]["all_present_once"] and report["steady"]["errors"] == 0
    if "crash" in report:
        crashed = report["crash"]["database"]
        ok = ok and crashed["missing"] == 0 and crashed["integrity_check"] == "ok"
    if "attack" in report:
        under = report["attack"]
        ok = ok and under["database"]["all_present_once"] and under["errors"] == 0
        ok = ok and not under["audit"]["forged_client_stored"] and under["audit"]["raw_control_characters"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
