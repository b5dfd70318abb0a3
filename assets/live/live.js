// Timbre Live: the page half. Builds the Live tab's controls, captures the microphone through an
// AudioWorklet, streams it over the studio's WebSocket and plays what comes back. Conversion
// knobs (pitch, index rate, protect, F0 method) apply while streaming; the voice and the block
// settings restart the stream. "Measure latency" plays noise bursts through the whole loop and
// finds them again in the returned audio (cross-correlation of their envelopes).
(() => {
  const BASE = "/timbre/live";
  const CHUNK_S = 0.02;
  const JITTER_S = 0.04;
  const state = {
    status: "idle", sent: 0, received: 0, stats: null, measuredLatencyMs: null, error: null,
    ws: null, ctx: null, node: null, media: null, ready: null,
  };
  window.timbreLive = state;

  function el(tag, attrs = {}, children = []) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === "text") node.textContent = v; else node.setAttribute(k, v);
    }
    for (const child of children) node.appendChild(child);
    return node;
  }

  function field(label, input) {
    return el("label", { class: "timbre-live-field" }, [el("span", { text: label }), input]);
  }

  function range(id, min, max, step, value) {
    const input = el("input", { id, type: "range", min, max, step, value });
    const out = el("output", { for: id, text: String(value) });
    input.addEventListener("input", () => { out.textContent = input.value; });
    const box = el("span", { class: "timbre-live-range" }, [input, out]);
    box.input = input;
    return box;
  }

  function build(panel, info) {
    const model = el("select", { id: "live-model" });
    for (const m of info.models) model.appendChild(el("option", { value: m.name, text: m.name }));
    const f0 = el("select", { id: "live-f0" });
    for (const name of info.f0_methods) f0.appendChild(el("option", { value: name, text: name }));
    f0.value = info.defaults.f0_method;
    // Engine: the voice's live student (lowest latency) when it has one, else the RVC synthesizer.
    const engine = el("select", { id: "live-engine" });
    for (const name of info.engines) engine.appendChild(el("option", { value: name, text: name }));
    const pickEngine = () => {
      const chosen = info.models.find((m) => m.name === model.value);
      engine.value = chosen && chosen.has_student ? "student" : "torch";
    };
    pickEngine();
    model.addEventListener("change", pickEngine);
    const ui = {
      model, f0, engine,
      pitch: range("live-pitch", -24, 24, 1, 0),
      indexRate: range("live-index-rate", 0, 1, 0.05, info.defaults.index_rate),
      protect: range("live-protect", 0, 0.5, 0.01, info.defaults.protect),
      block: range("live-block", 0.05, 1.5, 0.01, info.defaults.block_s),
      context: range("live-context", 0, 2.5, 0.1, info.defaults.context_s),
      crossfade: range("live-crossfade", 0.01, 0.15, 0.01, info.defaults.crossfade_s),
      start: el("button", { id: "live-start", class: "lg primary", text: "Start" }),
      stop: el("button", { id: "live-stop", class: "lg secondary", text: "Stop" }),
      measure: el("button", { id: "live-measure", class: "lg secondary", text: "Measure latency" }),
      status: el("div", { id: "live-status", class: "timbre-status", text: "Pick a voice and press Start." }),
      latency: el("div", { id: "live-latency", class: "timbre-status", text: "" }),
    };
    if (!info.models.length) ui.status.textContent = "No voice model yet: train one or import a zip in the Models tab.";
    panel.replaceChildren(
      el("div", { class: "timbre-live-grid" }, [
        field("Voice", model), field("Engine (student: lowest latency)", engine), field("F0 method", f0), field("Pitch (semitones)", ui.pitch),
        field("Index rate", ui.indexRate), field("Protect", ui.protect), field("Block (s)", ui.block),
        field("Context (s)", ui.context), field("Crossfade (s)", ui.crossfade),
      ]),
      el("div", { class: "timbre-live-buttons" }, [ui.start, ui.stop, ui.measure]),
      ui.status, ui.latency,
    );
    ui.start.addEventListener("click", () => start(ui));
    ui.stop.addEventListener("click", () => stop(ui, "Stopped."));
    ui.measure.addEventListener("click", () => measure(ui));
    for (const live of [ui.pitch.input, ui.indexRate.input, ui.protect.input, f0]) {
      live.addEventListener("change", () => sendUpdate(ui));
    }
    for (const restart of [model, engine, ui.block.input, ui.context.input, ui.crossfade.input]) {
      restart.addEventListener("change", () => { if (state.ws) start(ui); });
    }
  }

  function params(ui) {
    return {
      f0_method: ui.f0.value,
      pitch_shift_semitones: Number(ui.pitch.input.value),
      index_rate: Number(ui.indexRate.input.value),
      protect: Number(ui.protect.input.value),
    };
  }

  function sendUpdate(ui) {
    if (state.ws && state.ws.readyState === WebSocket.OPEN) {
      state.ws.send(JSON.stringify({ type: "update", params: params(ui) }));
    }
  }

  function show(ui, text, isError = false) {
    ui.status.textContent = text;
    ui.status.classList.toggle("timbre-error", isError);
    if (isError) state.error = text;
  }

  async function start(ui) {
    stop(ui, null);
    state.error = null;
    state.status = "starting";
    show(ui, "Asking for the microphone...");
    try {
      state.media = await navigator.mediaDevices.getUserMedia({
        audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false, channelCount: 1 },
      });
    } catch (err) {
      state.status = "error";
      show(ui, `No microphone: ${err.name === "NotAllowedError" ? "permission was refused; allow the microphone for this page" : err.message}`, true);
      return;
    }
    const ctx = new AudioContext({ latencyHint: "interactive" });
    state.ctx = ctx;
    await ctx.audioWorklet.addModule(`${BASE}/static/live-worklet.js`);
    const node = new AudioWorkletNode(ctx, "timbre-live", {
      processorOptions: { chunk: Math.round(CHUNK_S * ctx.sampleRate), jitter: Math.round(JITTER_S * ctx.sampleRate) },
    });
    state.node = node;
    ctx.createMediaStreamSource(state.media).connect(node);
    node.connect(ctx.destination);
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(`${scheme}://${location.host}${BASE}/ws`);
    ws.binaryType = "arraybuffer";
    state.ws = ws;
    node.port.onmessage = (event) => {
      const m = event.data;
      if (m.type === "input" && ws.readyState === WebSocket.OPEN && state.ready) {
        ws.send(m.samples.buffer);
        state.sent += m.samples.length;
      } else if (m.type === "measured") {
        finishMeasure(ui, m);
      } else if (m.type === "level") {
        state.gaps = m.gaps;
        state.skipped = m.skipped;
      }
    };
    ws.onopen = () => {
      ws.send(JSON.stringify({
        type: "start", model: ui.model.value, engine: ui.engine.value, sample_rate: ctx.sampleRate, params: params(ui),
        stream: {
          block_s: Number(ui.block.input.value), context_s: Number(ui.context.input.value),
          crossfade_s: Number(ui.crossfade.input.value),
        },
      }));
      show(ui, `Loading ${ui.model.value}...`);
    };
    ws.onmessage = (event) => {
      if (typeof event.data !== "string") {
        const samples = new Float32Array(event.data);
        state.received += samples.length;
        node.port.postMessage({ type: "audio", samples }, [samples.buffer]);
        return;
      }
      const m = JSON.parse(event.data);
      if (m.type === "ready") {
        state.ready = m;
        state.status = "streaming";
        node.port.postMessage({
          type: "timing", block: Math.round((m.block_ms / 1000) * ctx.sampleRate), jitter: Math.round(JITTER_S * ctx.sampleRate),
        });
        show(ui, `Streaming into ${m.model}: block ${m.block_ms} ms, algorithmic latency ${m.algorithmic_latency_ms} ms.`);
      } else if (m.type === "stats") {
        state.stats = m;
        const slow = m.suggested_block_s ? ` Too slow for this block: try ${m.suggested_block_s.toFixed(2)} s.` : "";
        show(ui, `Streaming into ${state.ready.model}: block ${m.block_ms} ms, compute p50 ${m.compute_p50_ms} / p95 ${m.compute_p95_ms} ms, ` +
          `algorithmic latency ${m.algorithmic_latency_ms} ms, dropped ${m.dropped}, gaps ${state.gaps || 0}, F0 ${m.f0_hz} Hz.${slow}`);
      } else if (m.type === "error") {
        state.status = "error";
        show(ui, `Live conversion stopped: ${m.message}`, true);
      }
    };
    ws.onclose = () => {
      if (state.ws === ws && state.status === "streaming") {
        state.status = "closed";
        show(ui, "The server closed the stream.", true);
      }
    };
  }

  function stop(ui, message) {
    if (state.ws) { try { state.ws.send(JSON.stringify({ type: "stop" })); } catch (e) { /* closed */ } state.ws.close(); }
    if (state.media) for (const track of state.media.getTracks()) track.stop();
    if (state.ctx) state.ctx.close();
    Object.assign(state, { ws: null, ctx: null, node: null, media: null, ready: null });
    if (message !== null) { state.status = "idle"; show(ui, message); }
  }

  function measure(ui) {
    if (!state.node || !state.ready) { show(ui, "Start streaming first, then measure.", true); return; }
    ui.latency.textContent = "Measuring: noise bursts are going through the loop...";
    state.measuredLatencyMs = null;
    state.node.port.postMessage({ type: "measure", seconds: 6, periodSeconds: 0.7, burstSeconds: 0.06, bursts: 5 });
  }

  function finishMeasure(ui, m) {
    const a = m.inEnv, b = m.outEnv;
    const maxLag = Math.min(a.length - 1, Math.round((2.5 * state.ctx.sampleRate) / m.blockSamples));
    let best = -Infinity, bestLag = 0;
    for (let lag = 0; lag <= maxLag; lag++) {
      let sum = 0;
      for (let i = 0; i + lag < b.length; i++) sum += a[i] * b[i + lag];
      if (sum > best) { best = sum; bestLag = lag; }
    }
    if (!(best > 0)) { ui.latency.textContent = "No burst came back: is the voice silent, or the gate too high?"; return; }
    const loopMs = (bestLag * m.blockSamples * 1000) / state.ctx.sampleRate;
    const deviceMs = ((state.ctx.outputLatency || 0) + (state.ctx.baseLatency || 0)) * 1000;
    state.measuredLatencyMs = Math.round(loopMs);
    ui.latency.textContent = `Measured end-to-end latency: ${Math.round(loopMs)} ms through the whole loop ` +
      `(+ ${Math.round(deviceMs)} ms the browser reports for its audio device).`;
  }

  async function init(panel) {
    panel.dataset.ready = "1";
    try {
      const response = await fetch(`${BASE}/models`, { credentials: "same-origin" });
      build(panel, await response.json());
    } catch (err) {
      panel.textContent = `The live panel could not load: ${err.message}`;
    }
  }

  const observer = new MutationObserver(() => {
    const panel = document.getElementById("timbre-live-panel");
    if (panel && !panel.dataset.ready) init(panel);
  });
  observer.observe(document.documentElement, { childList: true, subtree: true });
})();
