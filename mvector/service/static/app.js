// The mvector service page: record or choose recordings, then enrol / verify / identify through the /v1 API.
// Plain browser JavaScript, no build step. Recordings are captured with MediaRecorder, decoded by the browser and
// sent as 16 kHz mono 16-bit WAV (a format every server-side decoder reads); chosen files are sent unchanged.
"use strict";

const $ = (id) => document.getElementById(id);
const slots = { a: null, b: null }; // {blob, label}
let model = null;

function apiKey() { return sessionStorage.getItem("mvector-key") || ""; }

function log(text, ok = true) {
  const li = document.createElement("li");
  li.textContent = `${new Date().toLocaleTimeString()}  ${text}`;
  li.dataset.ok = String(ok);
  $("log").prepend(li);
}

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${apiKey()}` };
  let response;
  try {
    response = await fetch(path, { method, headers, body });
  } catch (err) {
    throw { status: 0, code: "network", message: `cannot reach the server (${err.message})` };
  }
  let data = null;
  try { data = await response.json(); } catch (_) { data = null; }
  if (!response.ok) {
    throw { status: response.status, code: data && data.code, message: (data && data.message) || response.statusText, data };
  }
  return data;
}

// ------------------------------------------------------------------ health and model
async function checkHealth() {
  const el = $("health");
  try {
    const r = await fetch("/health");
    const data = await r.json();
    el.dataset.status = data.status;
    el.textContent = data.status === "ok" ? `server ready (mvector ${data.version})`
      : data.status === "loading" ? "the model is loading…" : `server status: ${data.status}`;
    if (data.status === "loading") setTimeout(checkHealth, 2000);
  } catch (_) {
    el.dataset.status = "down";
    el.textContent = "the server does not answer";
  }
}

async function loadModel() {
  const el = $("model");
  if (!apiKey()) { el.textContent = "Enter a key to start."; return; }
  try {
    model = await api("GET", "/v1/model");
    const t = model.threshold;
    const source = typeof t.source === "string" ? t.source : JSON.stringify(t.source);
    el.textContent = `Key ${model.key.id} (${model.key.scope}). Model ${model.model.name}, ` +
      `threshold ${t.value.toFixed(3)} (${source}).`;
    el.dataset.loaded = "true";
    log(`key accepted (scope ${model.key.scope})`);
    refreshSpeakers();
  } catch (err) {
    el.dataset.loaded = "false";
    el.textContent = `The key was not accepted: ${err.message}`;
    log(`key refused: ${err.code || err.status}`, false);
  }
}

// ------------------------------------------------------------------ recordings
function wavBlob(samples, rate) {
  const view = new DataView(new ArrayBuffer(44 + samples.length * 2));
  const text = (off, s) => { for (let i = 0; i < s.length; i++) view.setUint8(off + i, s.charCodeAt(i)); };
  text(0, "RIFF"); view.setUint32(4, 36 + samples.length * 2, true); text(8, "WAVE");
  text(12, "fmt "); view.setUint32(16, 16, true); view.setUint16(20, 1, true); view.setUint16(22, 1, true);
  view.setUint32(24, rate, true); view.setUint32(28, rate * 2, true); view.setUint16(32, 2, true);
  view.setUint16(34, 16, true); text(36, "data"); view.setUint32(40, samples.length * 2, true);
  for (let i = 0; i < samples.length; i++) {
    const x = Math.max(-1, Math.min(1, samples[i]));
    view.setInt16(44 + i * 2, x < 0 ? x * 32768 : x * 32767, true);
  }
  return new Blob([view], { type: "audio/wav" });
}

async function toWav(encoded) {
  const rate = 16000;
  const decoded = await new OfflineAudioContext(1, 1, rate).decodeAudioData(await encoded.arrayBuffer());
  const mono = new Float32Array(decoded.length);
  for (let c = 0; c < decoded.numberOfChannels; c++) {
    const data = decoded.getChannelData(c);
    for (let i = 0; i < data.length; i++) mono[i] += data[i] / decoded.numberOfChannels;
  }
  return wavBlob(mono, decoded.sampleRate);
}

function setSlot(name, blob, label) {
  slots[name] = { blob, label };
  $(`slot-${name}`).dataset.ready = "true";
  $(`status-${name}`).textContent = label;
  const player = $(`play-${name}`);
  if (player.src) URL.revokeObjectURL(player.src);
  player.src = URL.createObjectURL(blob);
  player.hidden = false;
}

async function record(name, button) {
  const seconds = Math.min(30, Math.max(1, Number($("seconds").value) || 3));
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
    });
  } catch (err) {
    log(`microphone unavailable: ${err.message}`, false);
    $(`status-${name}`).textContent = `microphone unavailable (${err.name}); choose a file instead`;
    return;
  }
  const chunks = [];
  const recorder = new MediaRecorder(stream);
  recorder.ondataavailable = (e) => { if (e.data.size) chunks.push(e.data); };
  const stopped = new Promise((resolve) => { recorder.onstop = resolve; });
  button.disabled = true;
  button.classList.add("recording");
  recorder.start();
  for (let left = seconds; left > 0; left -= 0.5) {
    $(`status-${name}`).textContent = `recording… ${left.toFixed(1)} s left`;
    await new Promise((r) => setTimeout(r, 500));
  }
  recorder.stop();
  await stopped;
  stream.getTracks().forEach((t) => t.stop());
  button.disabled = false;
  button.classList.remove("recording");
  try {
    const wav = await toWav(new Blob(chunks, { type: recorder.mimeType }));
    setSlot(name, wav, `microphone, ${seconds} s (${Math.round(wav.size / 1024)} kB WAV)`);
    log(`recording ${name.toUpperCase()}: ${seconds} s from the microphone`);
  } catch (err) {
    log(`the recording could not be decoded: ${err.message}`, false);
  }
}

// ------------------------------------------------------------------ results
function pct(x) { return `${(100 * x).toFixed(1)} %`; }

function meaningOf(data) {
  const t = data.threshold;
  let text = `The score is the cosine similarity of two voice embeddings (−1 to 1; higher means more alike). ` +
    `This model calls it the same speaker at ${t.toFixed(3)} or above` +
    (model ? ` (threshold from ${typeof model.threshold.source === "string" ? model.threshold.source : "the model"}).` : ".") +
    " Scores far above or below the threshold are surer than scores near it.";
  if (data.probability !== undefined) {
    text += ` Calibrated: probability ${pct(data.probability)} that it is the same speaker` +
      (data.llr !== undefined ? ` (log-likelihood ratio ${data.llr.toFixed(2)}).` : ".");
  }
  return text;
}

function show(action, data, verdictHtml) {
  const box = $("result");
  box.dataset.state = "ok";
  box.dataset.action = action;
  $("verdict").innerHTML = verdictHtml;
  $("meaning").textContent = data && data.threshold !== undefined ? meaningOf(data) : "";
  $("result-json").textContent = JSON.stringify(data, null, 2);
}

function showError(action, err) {
  const box = $("result");
  box.dataset.state = "error";
  box.dataset.action = action;
  $("verdict").textContent = `${err.status || ""} ${err.code || "error"}: ${err.message}`;
  $("meaning").textContent = err.status === 401 ? "Enter a valid API key above." :
    err.status === 403 ? "This key's scope does not allow it (enrolment needs a write key)." : "";
  $("result-json").textContent = JSON.stringify(err.data || err, null, 2);
  log(`${action}: ${err.code || err.status} ${err.message}`, false);
}

function esc(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

function needSlot(name) {
  if (!slots[name]) throw { message: `record or choose recording ${name.toUpperCase()} first`, code: "no_recording" };
  return slots[name];
}

function needName() {
  const name = $("name").value.trim();
  if (!name) throw { message: "enter a name", code: "no_name" };
  return name;
}

function formWith(fields) {
  const form = new FormData();
  for (const [key, value] of fields) {
    if (value && value.blob) form.append(key, value.blob, value.label.startsWith("file ") ? value.label.slice(5) : `${key}.wav`);
    else form.append(key, value);
  }
  return form;
}

const actions = {
  async enrol() {
    const name = needName();
    const data = await api("POST", "/v1/speakers", formWith([["name", name], ["audio", needSlot("a")]]));
    show("enrol", data, `Enrolled <b>${esc(data.name)}</b> (${data.recordings} recording${data.recordings > 1 ? "s" : ""}).`);
    refreshSpeakers();
  },
  async add() {
    const name = needName();
    const data = await api("POST", `/v1/speakers/${encodeURIComponent(name)}/recordings`, formWith([["audio", needSlot("a")]]));
    show("add", data, `<b>${esc(data.name)}</b> now has ${data.recordings} recordings.`);
    refreshSpeakers();
  },
  async "verify-name"() {
    const name = needName();
    const data = await api("POST", `/v1/speakers/${encodeURIComponent(name)}/verify`, formWith([["audio", needSlot("a")]]));
    const yes = data.same_speaker;
    show("verify-name", data, `<span class="${yes ? "yes" : "no"}">${yes ? "Yes" : "No"}</span>: recording A ` +
      `${yes ? "is" : "is not"} <b>${esc(name)}</b> (score ${data.score.toFixed(3)}, threshold ${data.threshold.toFixed(3)}).`);
  },
  async identify() {
    const data = await api("POST", "/v1/identify?top_k=3", formWith([["audio", needSlot("a")]]));
    const others = data.candidates.map((c) => `${esc(c.name)} ${c.score.toFixed(3)}`).join(", ");
    const head = data.enrolled === 0 ? "Nobody is enrolled yet." : data.name === null || data.name === undefined
      ? `<span class="no">Unknown speaker</span> (best score ${data.score.toFixed(3)} is below ${data.threshold.toFixed(3)}).`
      : `<span class="yes">${esc(data.name)}</span> (score ${data.score.toFixed(3)}).`;
    show("identify", data, `${head}${others ? ` Candidates: ${others}.` : ""}`);
  },
  async compare() {
    const data = await api("POST", "/v1/verify", formWith([["audio1", needSlot("a")], ["audio2", needSlot("b")]]));
    const yes = data.same_speaker;
    show("compare", data, `<span class="${yes ? "yes" : "no"}">${yes ? "Same speaker" : "Different speakers"}</span> ` +
      `(score ${data.score.toFixed(3)}, threshold ${data.threshold.toFixed(3)}).`);
  },
};

async function run(action, button) {
  button.disabled = true;
  try {
    await actions[action]();
    log(`${action}: done`);
  } catch (err) {
    showError(action, err);
  } finally {
    button.disabled = false;
  }
}

async function refreshSpeakers() {
  const list = $("speakers");
  try {
    const speakers = await api("GET", "/v1/speakers");
    list.replaceChildren(...speakers.map((s) => {
      const li = document.createElement("li");
      li.textContent = `${s.name} (${s.recordings} recording${s.recordings > 1 ? "s" : ""})`;
      li.dataset.name = s.name;
      const del = document.createElement("button");
      del.type = "button";
      del.textContent = "delete";
      del.addEventListener("click", async () => {
        if (!confirm(`Delete ${s.name}?`)) return;
        try { await api("DELETE", `/v1/speakers/${encodeURIComponent(s.name)}`); log(`deleted ${s.name}`); }
        catch (err) { showError("delete", err); }
        refreshSpeakers();
      });
      li.append(del);
      return li;
    }));
    if (!speakers.length) list.innerHTML = "<li>(none)</li>";
    $("speaker-count").textContent = `(${speakers.length})`;
  } catch (err) {
    list.innerHTML = "";
  }
}

// ------------------------------------------------------------------ wiring
document.addEventListener("DOMContentLoaded", () => {
  checkHealth();
  $("key").value = apiKey();
  $("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem("mvector-key", $("key").value.trim());
    loadModel();
  });
  for (const button of document.querySelectorAll("button.record")) {
    button.addEventListener("click", () => record(button.dataset.slot, button));
  }
  for (const input of document.querySelectorAll("input[type=file]")) {
    input.addEventListener("change", () => {
      const file = input.files[0];
      if (!file) return;
      setSlot(input.dataset.slot, file, `file ${file.name}`);
      log(`recording ${input.dataset.slot.toUpperCase()}: file ${file.name} (${Math.round(file.size / 1024)} kB)`);
    });
  }
  for (const id of Object.keys(actions)) {
    $(id).addEventListener("click", () => run(id, $(id)));
  }
  $("refresh").addEventListener("click", refreshSpeakers);
  loadModel();
});
