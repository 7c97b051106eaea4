// The device page (/device): set up tfjs' wasm backend and zstd from the fedcore server, load
// data (a file the user picks, or a demo shard), then run a Device and show what it does.

import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-core/dist/register_all_gradients';
import { setWasmPaths } from '@tensorflow/tfjs-backend-wasm';

import { parseDigitsCsv, shardFromPayload } from './data.js';
import { Device } from './device.js';
import { Model } from './model.js';
import { cifarFromNpz } from './npz.js';
import { decodePayload, encodePayload } from './wire.js';
import { noneCodec } from './zstd.js';
import { loadZstd } from './zstd_web.js';

const ASSETS = '/device/assets/';
const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const view = { device: null, data: null, codecs: null, log: [] };
window.fedcoreDevice = view; // read by the browser tests

function show(status) {
  $('state').textContent = status.state;
  $('state').dataset.state = status.state;
  $('round').textContent = status.round || '–';
  $('rounds').textContent = status.rounds.length ? status.rounds.join(', ') : '–';
  $('model').textContent = status.model || '–';
  $('client-id').textContent = status.clientId || '–';
  $('samples').textContent = String(status.samples);
  const m = status.metrics;
  $('metrics').textContent = m ? `loss ${m.train_loss.toFixed(4)} · accuracy ${(100 * m.train_accuracy).toFixed(1)} %` : '–';
  const t = status.timings;
  const ms = (v) => (v === undefined ? '–' : `${v.toFixed(1)} ms`);
  $('timings').textContent = `epoch ${ms(t.epoch_ms)} · decode ${ms(t.decode_ms)} · encode ${ms(t.encode_ms)}${t.micro_ms === undefined ? '' : ` · split micro-batch ${ms(t.micro_ms)}`}`;
  $('bytes').textContent = `${status.bytesSent} B sent · ${status.bytesReceived} B received${status.splitBytesUp ? ` · split ${status.splitBytesUp} B up, ${status.splitBytesDown} B down` : ''}`;
  $('error').textContent = status.error || '';
  $('error').hidden = !status.error;
}

function log(msg) {
  const line = `${new Date().toLocaleTimeString()}  ${msg}`;
  view.log.push(line);
  const li = document.createElement('li');
  li.textContent = line;
  $('log').prepend(li);
}

function fail(msg) {
  $('error').textContent = msg;
  $('error').hidden = false;
  $('state').textContent = 'error';
  $('state').dataset.state = 'error';
  view.error = msg;
}

async function setup() {
  setWasmPaths(ASSETS);
  await tf.setBackend('wasm');
  await tf.ready();
  view.codecs = { none: noneCodec, zstd: await loadZstd(`${ASSETS}zstd.wasm`) };
  $('backend').textContent = `${tf.getBackend()} (${tf.env().getBool('WASM_HAS_SIMD_SUPPORT') ? 'SIMD' : 'no SIMD'}, single thread)`;
}

async function loadShard(index) {
  const limit = params.has('max_samples') ? `?limit=${encodeURIComponent(params.get('max_samples'))}` : '';
  const resp = await fetch(`/device/shard/${encodeURIComponent(index)}${limit}`, { cache: 'no-store' });
  if (!resp.ok) throw new Error(`shard ${index}: HTTP ${resp.status} ${await resp.text()}`);
  return shardFromPayload(new Uint8Array(await resp.arrayBuffer()), view.codecs);
}

function setData(data, where) {
  view.data = data;
  $('data-info').textContent = `${data.y.length} samples from ${where}`;
  $('join').disabled = false;
}

/** The federation's global model, from the public /status, every few seconds while joined. */
function watchGlobal() {
  const tick = async () => {
    try {
      const st = await (await fetch('/status', { cache: 'no-store' })).json();
      const acc = typeof st.accuracy === 'number' ? `${(100 * st.accuracy).toFixed(1)} %` : '–';
      $('global').textContent = `round ${st.round} · accuracy ${acc}`;
    } catch { /* the server is away: the device loop reports it */ }
    const s = view.device && view.device.status.state;
    if (s !== 'finish' && s !== 'error') setTimeout(tick, 3000);
  };
  tick();
}

async function join() {
  const name = $('name').value.trim();
  if (!name) return fail('give this device a name');
  if (!view.data) return fail('choose a data file or a demo shard first');
  $('join').disabled = true;
  $('leave').disabled = false;
  const num = (k, d) => (params.has(k) ? Number(params.get(k)) : d);
  view.device = new Device(view.data, {
    name, codecs: view.codecs, dtype: params.get('dtype') || 'bf16', codec: params.get('codec') || 'zstd',
    epochs: num('epochs', 2), batchSize: num('batch_size', 16), lr: num('lr', 0.05), onChange: show, onLog: log,
  });
  show(view.device.status);
  watchGlobal();
  view.device.run().then(() => log('the server ended the federation'), (e) => log(`stopped: ${e.message}`));
}

/**
 * Measurements for browser/bench_device.py (not used by the page itself): ms per local epoch of
 * `kind` on the loaded data (after one warm-up epoch), and encode/decode ms of its parameters.
 */
view.bench = async (kind, { epochs = 2, batchSize = 16, reps = 20 } = {}) => {
  const m = new Model(kind);
  m.load((await m.state()).map((t) => ({ ...t, values: Float32Array.from(t.values, (_, i) => Math.sin(i) * 0.05) })));
  await m.train(view.data.x, view.data.y, { epochs: 1, batchSize, lr: 0.05 });
  let t0 = performance.now();
  await m.train(view.data.x, view.data.y, { epochs, batchSize, lr: 0.05 });
  const epochMs = (performance.now() - t0) / epochs;
  const state = await m.state();
  const opts = { codecs: view.codecs, dtype: 'bf16', codec: 'zstd' };
  let payload = encodePayload(state, opts);
  t0 = performance.now();
  for (let i = 0; i < reps; i++) payload = encodePayload(state, opts);
  const encodeMs = (performance.now() - t0) / reps;
  t0 = performance.now();
  for (let i = 0; i < reps; i++) decodePayload(payload, { codecs: view.codecs, expected: m.expected() });
  const decodeMs = (performance.now() - t0) / reps;
  m.dispose();
  return { kind, samples: view.data.y.length, epoch_ms: epochMs, encode_ms: encodeMs, decode_ms: decodeMs, payload_bytes: payload.length };
};

async function main() {
  $('name').value = params.get('name') || `browser_${Math.random().toString(36).slice(2, 6)}`;
  $('join').addEventListener('click', () => join());
  $('leave').addEventListener('click', () => view.device && view.device.leave());
  $('file').addEventListener('change', async (ev) => {
    const f = ev.target.files[0];
    if (!f) return;
    try {
      const data = f.name.toLowerCase().endsWith('.npz')
        ? cifarFromNpz(new Uint8Array(await f.arrayBuffer()), { maxSamples: params.has('max_samples') ? Number(params.get('max_samples')) : Infinity })
        : parseDigitsCsv(await f.text());
      setData(data, f.name);
    } catch (e) {
      fail(`${f.name}: ${e.message}`);
    }
  });
  $('load-shard').addEventListener('click', async () => {
    try {
      setData(await loadShard($('shard').value), `demo shard ${$('shard').value}`);
    } catch (e) {
      fail(e.message);
    }
  });
  try {
    await setup();
  } catch (e) {
    return fail(`cannot start WebAssembly: ${e.message}`);
  }
  $('ready').hidden = false;
  if (params.has('shard')) {
    $('shard').value = params.get('shard');
    try {
      setData(await loadShard(params.get('shard')), `demo shard ${params.get('shard')}`);
    } catch (e) {
      return fail(e.message);
    }
    if (params.get('autostart') === '1') join();
  }
}

main();
