// Timbre Live: the audio-thread half. Moves samples only; the conversion runs on the server.
// Input: microphone frames are gathered into chunks and posted to the page (which sends them
// over the WebSocket). Output: converted frames from the page wait in a FIFO; playback starts one
// jitter margin after the first block arrives, an empty FIFO plays silence (a counted gap), and a
// FIFO that grows past a block plus two margins skips ahead so the delay never creeps up.
// Measure mode: noise bursts replace the microphone, and the envelopes of what went in and what
// came back are recorded, so the page can find the delay by cross-correlation.

class TimbreLiveProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = options.processorOptions;
    this.chunk = opts.chunk;
    this.block = opts.block || 0;
    this.jitter = opts.jitter || 0;
    this.armedAt = -1;
    this.skipped = 0;
    this.inBuf = new Float32Array(this.chunk);
    this.inFill = 0;
    this.fifo = [];
    this.fifoHead = 0;
    this.queued = 0;
    this.playing = false;
    this.gaps = 0;
    this.clock = 0;
    this.measure = null;
    this.port.onmessage = (event) => this.onMessage(event.data);
  }

  onMessage(message) {
    if (message.type === "audio") {
      this.fifo.push(message.samples);
      this.queued += message.samples.length;
      if (this.armedAt < 0) this.armedAt = this.clock;
      // Latency must not creep: past one block plus two jitter margins, skip to one margin.
      const limit = this.block + 2 * this.jitter;
      if (this.playing && this.block && this.queued > limit) this.drop(this.queued - (this.block + this.jitter));
    } else if (message.type === "measure") {
      const blocks = Math.ceil((message.seconds * sampleRate) / 128);
      this.measure = {
        period: Math.round(message.periodSeconds * sampleRate),
        burst: Math.round(message.burstSeconds * sampleRate),
        inputBlocks: Math.ceil((message.burstSeconds + message.periodSeconds * message.bursts) * sampleRate / 128),
        inEnv: new Float32Array(blocks),
        outEnv: new Float32Array(blocks),
        block: 0,
        start: this.clock,
        seed: 12345,
      };
    } else if (message.type === "timing") {
      this.block = message.block;
      this.jitter = message.jitter;
    } else if (message.type === "reset") {
      this.fifo = [];
      this.fifoHead = 0;
      this.queued = 0;
      this.playing = false;
      this.armedAt = -1;
    }
  }

  drop(samples) {
    let left = samples;
    while (left > 0 && this.fifo.length) {
      const head = this.fifo[0];
      const take = Math.min(left, head.length - this.fifoHead);
      this.fifoHead += take;
      this.queued -= take;
      left -= take;
      if (this.fifoHead === head.length) { this.fifo.shift(); this.fifoHead = 0; }
    }
    this.skipped += samples - left;
  }

  noise() {
    // xorshift32: reproducible white noise in [-1, 1)
    let x = this.measure.seed;
    x ^= x << 13; x ^= x >>> 17; x ^= x << 5;
    this.measure.seed = x >>> 0;
    return (this.measure.seed / 2147483648) - 1;
  }

  process(inputs, outputs) {
    const out = outputs[0][0];
    const n = out.length;
    const mic = inputs[0] && inputs[0].length ? inputs[0][0] : null;
    let source = mic || new Float32Array(n);
    const m = this.measure;
    if (m) {
      source = new Float32Array(n);
      let energy = 0;
      for (let i = 0; i < n; i++) {
        const t = this.clock + i - m.start;
        const inBurst = m.block < m.inputBlocks && (t % m.period) < m.burst;
        source[i] = inBurst ? 0.3 * this.noise() : 0;
        energy += source[i] * source[i];
      }
      m.inEnv[m.block] = Math.sqrt(energy / n);
    }
    for (let i = 0; i < n; i++) {
      this.inBuf[this.inFill++] = source[i];
      if (this.inFill === this.chunk) {
        this.port.postMessage({ type: "input", samples: this.inBuf });
        this.inBuf = new Float32Array(this.chunk);
        this.inFill = 0;
      }
    }
    // Playback starts one jitter margin after the first block arrived: a block lasts until the next.
    if (!this.playing && this.armedAt >= 0 && this.clock - this.armedAt >= this.jitter) this.playing = true;
    let filled = 0;
    if (this.playing) {
      while (filled < n && this.fifo.length) {
        const head = this.fifo[0];
        const take = Math.min(n - filled, head.length - this.fifoHead);
        out.set(head.subarray(this.fifoHead, this.fifoHead + take), filled);
        filled += take;
        this.fifoHead += take;
        this.queued -= take;
        if (this.fifoHead === head.length) { this.fifo.shift(); this.fifoHead = 0; }
      }
      if (filled < n) this.gaps++;
    }
    for (let i = filled; i < n; i++) out[i] = 0;
    for (let c = 1; c < outputs[0].length; c++) outputs[0][c].set(out);
    if (m) {
      let energy = 0;
      for (let i = 0; i < n; i++) energy += out[i] * out[i];
      m.outEnv[m.block] = Math.sqrt(energy / n);
      m.block++;
      if (m.block === m.inEnv.length) {
        this.port.postMessage({ type: "measured", inEnv: m.inEnv, outEnv: m.outEnv, blockSamples: n });
        this.measure = null;
      }
    }
    this.clock += n;
    if ((this.clock / n) % 94 === 0) this.port.postMessage({ type: "level", queued: this.queued, gaps: this.gaps, skipped: this.skipped });
    return true;
  }
}

registerProcessor("timbre-live", TimbreLiveProcessor);
