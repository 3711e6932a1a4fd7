"""The service's web page in a real browser: headless Chromium records from a fake microphone (a WAV file given
with ``--use-file-for-fake-audio-capture``), enrols, verifies and identifies, and does the same with a chosen file.

Chromium is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``), so no Python package beyond
the standard library is needed. Skipped when no Chromium is installed (Debian: ``apt-get install chromium``).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the service needs the serve extra: pip install 'mvector[serve]'")

from mvector.audio import save_wav  # noqa: E402
from mvector.data.synthetic import make_voices, synthesize_utterance  # noqa: E402
from mvector.demo import tiny_checkpoint  # noqa: E402
from mvector.service.keys import KeyStore  # noqa: E402
from mvector.service.process import ServerProcess  # noqa: E402

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (Debian: apt-get install chromium)")


class DevTools:
    """A minimal Chrome DevTools Protocol client over ``--remote-debugging-pipe`` (fd 3: commands, fd 4: replies)."""

    def __init__(self, args: list[str], timeout: float = 60.0) -> None:
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()

        def wire_fds() -> None:  # in the child: its fd 3 reads our commands, its fd 4 carries the replies
            os.dup2(to_child_r, 3)
            os.dup2(from_child_w, 4)

        self.proc = subprocess.Popen(
            [CHROMIUM, "--remote-debugging-pipe", *args],
            pass_fds=(3, 4),
            preexec_fn=wire_fds,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_child_r)
        os.close(from_child_w)
        self.timeout = timeout
        self._next_id = 0
        self._buffer = b""
        self.session: str | None = None

    def _read_message(self, deadline: float) -> dict:
        import select

        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_child], [], [], left)[0]:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self._from_child, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def send(self, method: str, params: dict | None = None, session: bool = True) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session and self.session:
            message["sessionId"] = self.session
        os.write(self._to_child, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def attach_page(self) -> None:
        targets = self.send("Target.getTargets", session=False)["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        self.session = self.send("Target.attachToTarget", {"targetId": page["targetId"], "flatten": True}, False)[
            "sessionId"
        ]

    def js(self, expression: str):
        """Evaluate ``expression`` in the page (as a user gesture, awaiting promises); returns its JSON value."""
        result = self.send(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True, "userGesture": True},
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.js(expression)
            if value:
                return value
            time.sleep(0.1)
        raise TimeoutError(f"page condition never became true: {expression}")

    def close(self) -> None:
        try:
            self.send("Browser.close", session=False)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_child)
        os.close(self._from_child)


def _result(dt: DevTools, action: str) -> dict:
    """Wait until the page shows the result of ``action``; returns the state and the JSON it shows."""
    dt.wait_for(f"document.getElementById('result').dataset.action === '{action}'")
    return dt.js(
        "({state: document.getElementById('result').dataset.state,"
        " verdict: document.getElementById('verdict').textContent,"
        " meaning: document.getElementById('meaning').textContent,"
        " json: JSON.parse(document.getElementById('result-json').textContent || 'null')})"
    )


def _click(dt: DevTools, element_id: str) -> None:
    dt.js(f"document.getElementById('result').dataset.action = ''; document.getElementById('{element_id}').click()")


@pytest.mark.slow
def test_page_records_enrols_verifies_and_identifies(tmp_path):
    voice = make_voices(2, seed=3)
    rng = np.random.default_rng(0)
    mic = tmp_path / "mic.wav"
    save_wav(mic, synthesize_utterance(voice[0], 4.0, rng=rng), 16000)
    upload = tmp_path / "upload.flac"  # a file in another format than WAV
    import soundfile

    soundfile.write(upload, synthesize_utterance(voice[0], 2.0, rng=rng), 16000, format="FLAC")
    model = tiny_checkpoint(tmp_path / "model")
    db = tmp_path / "db"
    with KeyStore(db) as store:
        _, key = store.create("write", name="browser")
    with ServerProcess(model, db, extra_args=["--threads", "1"], log_path=tmp_path / "serve.log") as server:
        dt = DevTools(
            [
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={mic}",
                f"--user-data-dir={tmp_path / 'profile'}",
                "--window-size=1000,1400",
                "about:blank",
            ]
        )
        try:
            dt.attach_page()
            dt.send("Page.enable")
            dt.send("Page.navigate", {"url": server.url + "/"})
            dt.wait_for("document.readyState === 'complete' && !!document.getElementById('key')")
            dt.wait_for("document.getElementById('health').dataset.status === 'ok'")

            # a wrong key is refused and the page says so
            dt.js("document.getElementById('key').value = 'mvk_000000000000_' + 'A'.repeat(43);"
                  "document.getElementById('key-save').click()")
            dt.wait_for("document.getElementById('model').textContent.includes('not accepted')")

            dt.js(f"document.getElementById('key').value = {json.dumps(key)};")
            dt.js("document.getElementById('key-save').click()")
            dt.wait_for("document.getElementById('model').dataset.loaded === 'true'")

            # record 2 s from the (fake) microphone into slot A, enrol it as alice
            dt.js("document.getElementById('seconds').value = '2'; document.querySelector('button.record').click()")
            dt.wait_for("document.getElementById('slot-a').dataset.ready === 'true'", timeout=30)
            # the page made a 16 kHz mono WAV of about 2 s that holds the fake microphone's sound, not silence
            rate, seconds, rms = dt.js(
                "(async () => { const buf = await slots.a.blob.arrayBuffer();"
                " const pcm = new Int16Array(buf, 44); let e = 0; for (const x of pcm) e += (x / 32768) ** 2;"
                " return [new DataView(buf).getUint32(24, true), pcm.length / 16000, Math.sqrt(e / pcm.length)]; })()"
            )
            assert rate == 16000 and 1.5 < seconds < 2.6 and rms > 0.01, (rate, seconds, rms)
            dt.js("document.getElementById('name').value = 'alice'")
            _click(dt, "enrol")
            enrolled = _result(dt, "enrol")
            assert enrolled["state"] == "ok", enrolled
            assert enrolled["json"] == {"name": "alice", "recordings": 1}

            # the same voice again is alice; the page explains the score
            _click(dt, "verify-name")
            verified = _result(dt, "verify-name")
            assert verified["state"] == "ok", verified
            assert verified["json"]["speaker"] == "alice" and "score" in verified["json"]
            assert "cosine similarity" in verified["meaning"]

            # a chosen FLAC file in slot B, compared with the microphone recording, then identified from slot A
            doc = dt.send("DOM.getDocument")["root"]["nodeId"]
            node = dt.send("DOM.querySelector", {"nodeId": doc, "selector": "input[type=file][data-slot=b]"})["nodeId"]
            dt.send("DOM.setFileInputFiles", {"nodeId": node, "files": [str(upload)]})
            dt.wait_for("document.getElementById('slot-b').dataset.ready === 'true'")
            _click(dt, "compare")
            compared = _result(dt, "compare")
            assert compared["state"] == "ok", compared
            assert set(compared["json"]) >= {"score", "same_speaker", "threshold"}

            # an error is shown as such: enrolling alice again is a name conflict
            _click(dt, "enrol")
            conflict = _result(dt, "enrol")
            assert conflict["state"] == "error" and "speaker_exists" in conflict["verdict"]

            selector = "input[type=file][data-slot=a]"
            node_a = dt.send("DOM.querySelector", {"nodeId": doc, "selector": selector})["nodeId"]
            dt.send("DOM.setFileInputFiles", {"nodeId": node_a, "files": [str(upload)]})
            dt.wait_for("document.getElementById('status-a').textContent.includes('upload.flac')")
            _click(dt, "identify")
            identified = _result(dt, "identify")
            assert identified["state"] == "ok", identified
            assert identified["json"]["enrolled"] == 1
            assert [c["name"] for c in identified["json"]["candidates"]] in (["alice"], [])

            dt.wait_for(
                "document.querySelector('#speakers li[data-name=alice]') !== null"
                " && document.getElementById('speaker-count').textContent === '(1)'"
            )
            shot = base64.b64decode(dt.send("Page.captureScreenshot", {"format": "png"})["data"])
            assert shot[:8] == b"\x89PNG\r\n\x1a\n"
            (tmp_path / "page.png").write_bytes(shot)
        finally:
            dt.close()
    with KeyStore(db) as store:
        actions = [(e.action, e.target, e.status) for e in store.audit_log(outcome="all")]
    assert ("enrol", "alice", 201) in actions and ("enrol", "alice", 409) in actions
    shown = Path(os.environ.get("MVECTOR_SCREENSHOT", ""))
    if shown.name:  # keep the screenshot for a person to look at
        shutil.copyfile(tmp_path / "page.png", shown)
