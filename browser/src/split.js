// Split training in the page (the device side of fedcore.split, docs/split-training.md): the
// device part runs here, each micro-batch's cut activations (and labels) go to the edge as one
// wire-format message (POST /split/{round}), the edge answers their gradient, and the page
// backpropagates it. Gradients are summed over a mini-batch's micro-batches and the optimizer
// steps once per mini-batch, as fedcore.split.device.DeviceTrainer does (GPipe).

import * as tf from '@tensorflow/tfjs-core';

import { WireError } from './errors.js';
import { gatherBatch, mulberry32, shuffledOrder } from './model.js';
import { decodePayload, encodePayload } from './wire.js';

/** The tensor each message kind carries (fedcore/split/messages.py TENSOR_NAME). */
export const TENSOR_NAME = { forward: 'activations', grad: 'activation_grad', output: 'output', backward: 'output_grad' };
export const LABELS = 'labels';
const META_KEYS = ['round', 'epoch', 'step', 'micro', 'num_micro', 'size', 'mini_size'];
const FLOAT_WIRES = ['float32', 'bfloat16', 'float16'];
const MAX_MICRO_BATCHES = 4096;

/**
 * Encode one message as fedcore.split.messages.encode_message does, byte for byte: kind
 * "weights", the tensor (float32 cast to `dtype` on the wire), labels int64, meta
 * {split: kind, round, epoch, step, micro, num_micro, size, mini_size[, loss, correct]}.
 * msg: {kind, meta, shape, values: Float32Array, labels?: Int32Array | BigInt64Array, loss?, correct?}.
 */
export function encodeMessage(msg, { codecs, dtype = 'fp32', codec = 'none', level = null }) {
  const name = TENSOR_NAME[msg.kind];
  if (!name) throw new WireError(`unknown split message kind ${msg.kind}`);
  const tensors = [{ name, shape: msg.shape, dtype: 'float32', values: msg.values }];
  if (msg.labels) {
    const l = msg.labels instanceof BigInt64Array ? msg.labels : BigInt64Array.from(msg.labels, (v) => BigInt(v));
    tensors.push({ name: LABELS, shape: [l.length], dtype: 'int64', values: l });
  }
  const meta = { split: msg.kind };
  for (const k of META_KEYS) meta[k] = msg.meta[k];
  if (msg.loss !== undefined && msg.loss !== null) meta.loss = msg.loss;
  if (msg.correct !== undefined && msg.correct !== null) meta.correct = msg.correct;
  return encodePayload(tensors, { codecs, dtype, codec, level: codec === 'none' ? null : (level ?? 3), meta });
}

const sameMeta = (a, b) => META_KEYS.every((k) => a[k] === b[k]);

/**
 * Decode a message and check it as fedcore.split.messages.decode_message does: `kind` expected,
 * per-sample `shape`, the exact meta it answers (`replyTo`), labels only where `labels` says,
 * finite values. Returns {kind, meta, shape, values, labels, loss, correct}.
 */
export function decodeMessage(bytes, { codecs, kind, shape, replyTo, labels = false, maxBytes = 256 * 1024 * 1024 }) {
  if (bytes.length > maxBytes) throw new WireError(`split message of ${bytes.length} bytes is over the ${maxBytes}-byte limit`);
  const name = TENSOR_NAME[kind];
  const size = replyTo.size;
  const expected = new Map([[name, { shape: [size, ...shape], dtype: 'float32' }]]);
  if (labels) expected.set(LABELS, { shape: [size], dtype: 'int64' });
  const n = size * shape.reduce((a, b) => a * b, 1);
  const { header, tensors } = decodePayload(bytes, { codecs, expected, maxSize: 4 * n + (labels ? 8 * size : 0) });
  if (header.kind !== 'weights') throw new WireError('split messages carry tensors, not parameter updates');
  const meta = header.meta;
  if (meta.split !== kind) throw new WireError(`message kind ${JSON.stringify(meta.split)} is not the expected ${kind}`);
  for (const k of META_KEYS) {
    if (!Number.isInteger(meta[k])) throw new WireError(`message meta ${k}=${JSON.stringify(meta[k])} is not an integer`);
  }
  if (meta.num_micro < 1 || meta.num_micro > MAX_MICRO_BATCHES || meta.micro < 0 || meta.micro >= meta.num_micro) {
    throw new WireError(`message meta micro=${meta.micro} num_micro=${meta.num_micro} is out of range`);
  }
  if (!sameMeta(meta, replyTo)) throw new WireError(`reply is for step ${meta.step} micro ${meta.micro} of round ${meta.round}, expected step ${replyTo.step} micro ${replyTo.micro} of round ${replyTo.round}`);
  const loss = meta.loss ?? null;
  if (loss !== null && (typeof loss !== 'number' || !Number.isFinite(loss))) throw new WireError(`message loss ${loss} is not a finite number`);
  const correct = meta.correct ?? null;
  if (correct !== null && !(Number.isInteger(correct) && correct >= 0 && correct <= size)) throw new WireError(`message correct=${correct} is not an integer in [0, ${size}]`);
  const t = tensors.find((x) => x.name === name);
  if (!FLOAT_WIRES.includes(t.wire)) throw new WireError(`tensor ${name} travels as ${t.wire}, not a float wire dtype`);
  for (let i = 0; i < t.values.length; i++) {
    if (!Number.isFinite(t.values[i])) throw new WireError(`${name} of step ${meta.step} micro ${meta.micro} hold NaN or Inf`);
  }
  const lab = tensors.find((x) => x.name === LABELS);
  return { kind, meta: Object.fromEntries(META_KEYS.map((k) => [k, meta[k]])), shape: t.shape, values: t.values, labels: lab ? lab.values : null, loss, correct };
}

/** Micro-batch sizes of a mini-batch of n, as torch.tensor_split(x, m) (empty ones dropped). */
export function microSizes(n, m) {
  const base = Math.floor(n / m);
  const extra = n % m;
  return Array.from({ length: m }, (_, i) => base + (i < extra ? 1 : 0)).filter((s) => s > 0);
}

/**
 * The device side of a split round. `model` is a Model holding the device part; `send(bytes)`
 * posts one message and resolves to the edge's reply bytes. opts: {codecs, microBatches,
 * window, dtype, codec, lr, round}.
 */
export class SplitTrainer {
  constructor(model, send, opts) {
    this.model = model;
    this.send = send;
    this.opts = { microBatches: 4, window: 4, dtype: 'fp32', codec: 'none', round: 0, ...opts };
    this.step = model.sgd(this.opts.lr);
    this.bytesUp = 0;
    this.bytesDown = 0;
    this.microMs = [];
  }

  /**
   * One mini-batch (xs: tf tensor (n, dim), y: Int32Array n): micro-batches in flight up to the
   * window, the gradient of each backpropagated as its reply arrives, one optimizer step at the
   * end. Returns {lossSum (Σ loss·size), correct, samples}. On any error nothing is stepped.
   */
  async trainStep(xs, y, { epoch, step }) {
    const n = y.length;
    const sizes = microSizes(n, this.opts.microBatches);
    const vars = this.model.spec.map(([name]) => this.model.vars[name]);
    const acc = {};
    let lossSum = 0;
    let correct = 0;
    const inflight = [];
    let off = 0;
    const micros = sizes.map((size, i) => {
      const m = { meta: { round: this.opts.round, epoch, step, micro: i, num_micro: sizes.length, size, mini_size: n }, off };
      off += size;
      return m;
    });
    const input = (m) => tf.slice(xs, [m.off, 0], [m.meta.size, xs.shape[1]]);
    const launch = (m) => {
      const t0 = performance.now();
      const act = tf.tidy(() => this.model.logits(input(m)));
      m.shape = act.shape.slice(1);
      const values = act.dataSync();
      act.dispose();
      const bytes = encodeMessage({ kind: 'forward', meta: m.meta, shape: act.shape, values, labels: y.subarray(m.off, m.off + m.meta.size) },
        { codecs: this.opts.codecs, dtype: this.opts.dtype, codec: this.opts.codec });
      this.bytesUp += bytes.length;
      m.t0 = t0;
      m.reply = this.send(bytes);
      m.reply.catch(() => {}); // awaited in order below; an early failure must not be "unhandled"
    };
    const land = async (m) => {
      const bytes = await m.reply;
      this.bytesDown += bytes.length;
      const msg = decodeMessage(bytes, { codecs: this.opts.codecs, kind: 'grad', shape: m.shape, replyTo: m.meta });
      tf.tidy(() => {
        const dy = tf.tensor(msg.values, [m.meta.size, ...m.shape], 'float32');
        // The vector-Jacobian product with the edge's gradient: d/dθ Σ(f(x)·dy). The forward is
        // recomputed here (tfjs keeps no tape between calls), so the result is the same.
        const { grads } = tf.variableGrads(() => tf.sum(tf.mul(this.model.logits(input(m)), dy)), vars);
        for (const [name] of this.model.spec) {
          const g = grads[`${this.model.prefix}/${name}`];
          const prev = acc[name];
          acc[name] = tf.keep(prev ? tf.add(prev, g) : g);
          if (prev) prev.dispose();
        }
      });
      lossSum += msg.loss * m.meta.size;
      correct += msg.correct;
      this.microMs.push(performance.now() - m.t0);
    };
    try {
      for (const m of micros) {
        launch(m);
        inflight.push(m);
        if (inflight.length >= this.opts.window) await land(inflight.shift());
      }
      while (inflight.length) await land(inflight.shift());
      this.step(acc);
    } finally {
      for (const g of Object.values(acc)) g.dispose();
    }
    return { lossSum, correct, samples: n };
  }

  /**
   * `epochs` passes over (x: Float32Array or Uint8Array N*dim, y: Int32Array N) in shuffled
   * mini-batches (`prepare(rows)` turns a batch's raw rows into the model's input in place).
   * Returns the last epoch's {train_loss, train_accuracy} (what fedcore.split reports) and the
   * split traffic.
   */
  async train(x, y, { epochs = 1, batchSize = 32, seed = 0, onBatch = null, prepare = null } = {}) {
    const n = y.length;
    const dim = x.length / n;
    const rand = mulberry32(seed);
    let last = { lossSum: 0, correct: 0, seen: 0 };
    for (let e = 0; e < epochs; e++) {
      last = { lossSum: 0, correct: 0, seen: 0 };
      const order = shuffledOrder(n, rand);
      for (let s = 0, step = 0; s < n; s += batchSize, step++) {
        const idx = order.subarray(s, Math.min(s + batchSize, n));
        const { bx, by } = gatherBatch(x, y, idx, dim);
        if (prepare) prepare(bx); // e.g. CIFAR pixels -> normalised floats, one batch at a time
        const xs = tf.tensor2d(bx, [idx.length, dim]);
        try {
          const r = await this.trainStep(xs, by, { epoch: e, step });
          last.lossSum += r.lossSum;
          last.correct += r.correct;
          last.seen += r.samples;
        } finally {
          xs.dispose();
        }
        if (onBatch) await onBatch(s + idx.length);
      }
    }
    const seen = Math.max(last.seen, 1);
    return { train_loss: last.lossSum / seen, train_accuracy: last.correct / seen, split_bytes_up: this.bytesUp, split_bytes_down: this.bytesDown };
  }
}
