// A browser device: the run loop of fedcore/client.py (FLClient.run) around the page's model,
// data and wire codec. It reports what it does through `onChange` for the page to show.

import { HttpError, RestClient, forgotten, retriable } from './client.js';
import { WireError } from './errors.js';
import { Model, SPECS } from './model.js';
import { INPUT_DIM, partFor } from './parts.js';
import { SplitTrainer } from './split.js';
import { decodePayload, encodePayload } from './wire.js';

const LONG_POLL_S = 10;
const HEARTBEAT_MS = 2000;
const BACKOFF = [200, 5000]; // first and largest retry delay (ms), as fedcore's constants
const RECONNECT_TIMEOUT_MS = 120000;
const MAX_GLOBAL_BYTES = 64 * 1024 * 1024;

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
// Yield to the event loop without timer clamping (heartbeats and the page stay live while training).
const yieldNow = () => new Promise((r) => {
  const ch = new MessageChannel();
  ch.port1.onmessage = () => r();
  ch.port2.postMessage(0);
});

/** Which of fedcore's digits models a global payload is for (from its tensor names). */
export function modelFor(header) {
  const names = header.tensors.map((t) => t.name).sort().join(',');
  for (const [kind, spec] of Object.entries(SPECS)) if (spec.map(([n]) => n).sort().join(',') === names) return kind;
  throw new WireError(`the server's model (${header.tensors.length} tensors: ${header.tensors.slice(0, 3).map((t) => t.name)}…) is not one this page can train (${Object.keys(SPECS).join(', ')})`);
}

export class Device {
  /** data: {x: Float32Array (N*64), y: Int32Array (N)}; opts: {name, codecs, dtype, codec, epochs, batchSize, lr, onChange}. */
  constructor(data, opts) {
    this.data = data;
    this.opts = opts;
    this.http = new RestClient(opts.base || '');
    this.model = null;
    this.globalVersion = -1;
    this.lastRound = 0;
    this.stopped = false;
    this.status = { state: 'join', round: 0, rounds: [], error: null, model: null, samples: data.y.length, metrics: null, timings: {}, bytesSent: 0, bytesReceived: 0, splitBytesUp: 0, splitBytesDown: 0, clientId: null };
  }

  set(patch) {
    Object.assign(this.status, patch);
    if (this.opts.onChange) this.opts.onChange(this.status);
  }

  log(msg) {
    if (this.opts.onLog) this.opts.onLog(msg);
  }

  async retry(op) {
    let delay = BACKOFF[0];
    const end = Date.now() + RECONNECT_TIMEOUT_MS;
    for (;;) {
      try {
        return await op();
      } catch (e) {
        if (this.stopped || !retriable(e) || Date.now() + delay > end) throw e;
        this.log(`server unreachable (${e.message}); retrying in ${(delay / 1000).toFixed(1)} s`);
        await sleep(delay);
        delay = Math.min(delay * 2, BACKOFF[1]);
      }
    }
  }

  async connect() {
    const reg = await this.retry(() => this.http.register(this.opts.name, this.data.y.length));
    this.set({ clientId: reg.client_id });
    this.log(`registered as ${reg.client_id} (round ${reg.round})`);
    await this.pullGlobal();
  }

  /**
   * Fetch and load the global model. `config` is the train instruction's: in split mode
   * (`config.mode === 'split'`) the global is the device part of a cut model. Before the first
   * instruction a global this page cannot place without it (a device part) is checked and kept
   * for later.
   */
  async pullGlobal(config = null) {
    const [version, payload] = await this.retry(() => this.http.fetchGlobal());
    this.set({ bytesReceived: this.status.bytesReceived + payload.length });
    if (version === this.globalVersion) return;
    const t0 = performance.now();
    const { header, tensors } = decodePayload(payload, { codecs: this.opts.codecs, maxSize: MAX_GLOBAL_BYTES, expected: this.model ? this.model.expected() : null });
    if (!this.model) {
      if (config && config.mode === 'split') {
        const { kind, at, part } = partFor(header, config);
        this.model = new Model(`${kind}@${at}`, part);
      } else if (config) {
        this.model = new Model(modelFor(header));
      } else {
        try {
          this.model = new Model(modelFor(header));
        } catch (e) {
          if (!(e instanceof WireError)) throw e;
          return; // a device part (split mode): placed when the train instruction names the cut
        }
      }
      this.set({ model: this.model.kind });
    }
    this.model.load(tensors);
    this.globalVersion = version;
    this.set({ timings: { ...this.status.timings, decode_ms: performance.now() - t0 } });
  }

  async trainRound(round, config) {
    this.set({ state: 'training', round });
    await this.pullGlobal(config);
    const split = config.mode === 'split';
    let beating = true;
    const beat = setInterval(() => {
      if (beating) this.http.signal('training', 0).catch(() => {}); // a missed heartbeat is not fatal
    }, HEARTBEAT_MS);
    let payload;
    let metrics;
    try {
      const epochs = Number(config.epochs ?? config.local_epochs ?? this.opts.epochs);
      const batchSize = Number(config.batch_size ?? this.opts.batchSize);
      const lr = Number(config.lr ?? this.opts.lr);
      const t0 = performance.now();
      let n = 0;
      const onBatch = async () => {
        if (++n % 4 === 0) await yieldNow();
        if (this.stopped) throw new Error('stopped');
      };
      let splitTimings = {};
      if (split) {
        const kind = this.model.kind.split('@')[0];
        const dim = this.data.x.length / this.data.y.length;
        if (INPUT_DIM[kind] !== dim) throw new WireError(`the server trains ${kind} (inputs of ${INPUT_DIM[kind]} values); this device's data has ${dim} per sample`);
        const trainer = new SplitTrainer(this.model, (bytes) => this.http.splitPost(round, bytes), {
          codecs: this.opts.codecs, microBatches: Number(config.micro_batches ?? 4), window: Number(config.split_window ?? 4),
          dtype: config.split_dtype ?? 'fp32', codec: 'none', lr, round,
        });
        metrics = await trainer.train(this.data.x, this.data.y, { epochs, batchSize, seed: round, onBatch, prepare: this.data.prepare });
        const ms = trainer.microMs.slice().sort((a, b) => a - b);
        splitTimings = { micro_ms: ms[Math.floor(ms.length / 2)] ?? 0 };
        this.set({ splitBytesUp: this.status.splitBytesUp + metrics.split_bytes_up, splitBytesDown: this.status.splitBytesDown + metrics.split_bytes_down });
      } else {
        metrics = await this.model.train(this.data.x, this.data.y, { epochs, batchSize, lr, seed: round, onBatch });
      }
      const epochMs = (performance.now() - t0) / epochs;
      const t1 = performance.now();
      payload = encodePayload(await this.model.state(), { codecs: this.opts.codecs, dtype: this.opts.dtype, codec: this.opts.codec, meta: { round, client: this.opts.name } });
      this.set({ metrics, timings: { ...this.status.timings, ...splitTimings, epoch_ms: epochMs, encode_ms: performance.now() - t1 } });
    } finally {
      beating = false;
      clearInterval(beat);
    }
    this.set({ state: 'update' });
    await this.retry(() => this.http.pushUpdate(round, payload, this.data.y.length, metrics));
    this.lastRound = round;
    this.set({ rounds: [...this.status.rounds, round], bytesSent: this.status.bytesSent + payload.length, error: null });
    this.log(`round ${round}: sent ${payload.length} B (loss ${metrics.train_loss.toFixed(3)}, accuracy ${metrics.train_accuracy.toFixed(3)})`);
  }

  /** Take part in rounds until the server says stop (or stop() is called). */
  async run() {
    try {
      await this.connect();
      let state = 'ready';
      this.set({ state });
      while (!this.stopped) {
        let instr;
        try {
          instr = await this.retry(() => this.http.signal(state, LONG_POLL_S));
        } catch (e) {
          if (!forgotten(e)) throw e;
          this.log('the server forgot this device; registering anew');
          this.http.clientId = this.http.token = null;
          await this.connect();
          continue;
        }
        if (instr.action === 'stop') break;
        if (instr.action === 'reconnect') {
          await this.connect();
        } else if (instr.action === 'train' && instr.round > this.lastRound) {
          try {
            await this.trainRound(instr.round, instr.config || {});
          } catch (e) {
            // A payload this page refuses, or an update the server refuses (the round closed
            // without it: 409; too large or malformed: 413/400): show it, wait for the next round.
            const refused = e instanceof HttpError && [400, 409, 413].includes(e.status);
            if (!(e instanceof WireError) && !refused) throw e;
            this.lastRound = Math.max(this.lastRound, instr.round);
            this.set({ error: `round ${instr.round}: ${e.message}${refused ? '' : ' (nothing sent)'}` });
            this.log(`round ${instr.round} skipped: ${e.message}`);
          }
        }
        state = 'ready';
        this.set({ state });
      }
      this.set({ state: 'finish' });
    } catch (e) {
      this.set({ state: 'error', error: e.message });
      throw e;
    }
  }

  async leave() {
    this.stopped = true;
    try {
      await this.http.disconnect();
    } catch { /* leaving anyway */ }
    this.set({ state: 'finish' });
  }
}
