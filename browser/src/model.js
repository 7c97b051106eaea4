// fedcore's digits models in tfjs, with the exact state-dict names and shapes of
// fedcore/app/models.py (torch layouts: Linear weight (out, in), Conv2d weight (out, in, kh, kw)),
// so the server averages a page's update with Python clients' updates. Variables are stored in
// torch layout and the forward pass works around it (matMul with transposeB, im2col convs):
// tfjs' wasm backend has no Conv2DBackpropFilter kernel, and im2col + matMul needs none.

import * as tf from '@tensorflow/tfjs-core';

/** name -> shape of each model's parameters, in state-dict order. */
export const SPECS = {
  digits_mlp: [
    ['0.weight', [128, 64]], ['0.bias', [128]],
    ['2.weight', [64, 128]], ['2.bias', [64]],
    ['4.weight', [10, 64]], ['4.bias', [10]],
  ],
  digits_cnn: [
    ['net.0.weight', [16, 1, 3, 3]], ['net.0.bias', [16]],
    ['net.2.weight', [32, 16, 3, 3]], ['net.2.bias', [32]],
    ['net.6.weight', [64, 512]], ['net.6.bias', [64]],
    ['net.8.weight', [10, 64]], ['net.8.bias', [10]],
  ],
};

/**
 * a · bᵀ with its gradient written out with explicit transposes: tfjs-wasm's matMul is ~25x
 * slower with a transpose flag (which the built-in gradient uses) than on plain operands.
 */
export const matMulBT = tf.customGrad((a, bT, save) => {
  save([a, bT]);
  return {
    value: tf.matMul(a, tf.transpose(bT)),
    gradFunc: (dy, [sa, sbT]) => [tf.matMul(dy, sbT), tf.matMul(tf.transpose(dy), sa)],
  };
});

export const linear = (x, w, b) => tf.add(matMulBT(x, w), b);

/** 3x3 convolution, stride 1, padding 1, as im2col + matMul. x: NHWC, w: (out, in, 3, 3). */
function conv3x3(x, w, b) {
  const [n, h, wd, c] = x.shape;
  const out = w.shape[0];
  const padded = tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]]);
  const taps = [];
  for (let ky = 0; ky < 3; ky++) for (let kx = 0; kx < 3; kx++) taps.push(tf.slice(padded, [0, ky, kx, 0], [n, h, wd, c]));
  // Taps side by side: column (ky*3 + kx)*C + c, the order of w as (out, ky, kx, in). A concat,
  // not a stack: the gradient of a concat is slices, the wasm backend's Unpack is slow.
  const cols = tf.reshape(tf.concat(taps, 3), [n * h * wd, 9 * c]);
  const wk = tf.reshape(tf.transpose(w, [0, 2, 3, 1]), [out, 9 * c]);
  const y = matMulBT(cols, wk);
  return tf.add(tf.reshape(y, [n, h, wd, out]), b);
}

/** 2x2 max-pool, stride 2, as a reshape and a max (its gradient needs no special kernel). */
function maxPool2(x) {
  const [n, h, w, c] = x.shape;
  return tf.max(tf.reshape(x, [n, h / 2, 2, w / 2, 2, c]), [2, 4]);
}

const FORWARD = {
  digits_mlp(p, x) {
    const h1 = tf.relu(linear(x, p['0.weight'], p['0.bias']));
    const h2 = tf.relu(linear(h1, p['2.weight'], p['2.bias']));
    return linear(h2, p['4.weight'], p['4.bias']);
  },
  digits_cnn(p, x) {
    const n = x.shape[0];
    let h = tf.reshape(x, [n, 8, 8, 1]); // torch's view(-1, 1, 8, 8): same element order for C = 1
    h = tf.relu(conv3x3(h, p['net.0.weight'], p['net.0.bias']));
    h = tf.relu(conv3x3(h, p['net.2.weight'], p['net.2.bias']));
    h = maxPool2(h);
    h = tf.reshape(tf.transpose(h, [0, 3, 1, 2]), [n, 32 * 4 * 4]); // torch flattens NCHW
    h = tf.relu(linear(h, p['net.6.weight'], p['net.6.bias']));
    return linear(h, p['net.8.weight'], p['net.8.bias']);
  },
};

/** Mean cross-entropy of logits (N, K) against integer labels (N,), as nn.CrossEntropyLoss. */
function crossEntropy(logits, labels) {
  const onehot = tf.oneHot(labels, logits.shape[1]);
  return tf.mean(tf.sub(tf.logSumExp(logits, 1), tf.sum(tf.mul(onehot, logits), 1)));
}

let instances = 0;

/** A model: tfjs variables named like the torch state dict, plus SGD as fedcore.loops.train does it. */
export class Model {
  /** `part` ({spec, forward}) makes this the device part of a cut model (see parts.js). */
  constructor(kind, part = null) {
    if (!part && !SPECS[kind]) throw new Error(`unknown model ${kind}; choose ${Object.keys(SPECS).join(' or ')}`);
    this.kind = kind;
    this.spec = part ? part.spec : SPECS[kind];
    this.forward = part ? part.forward : FORWARD[kind];
    this.prefix = `${kind}#${++instances}`; // tfjs variable names are global
    this.vars = Object.fromEntries(this.spec.map(([name, shape]) => [name, tf.variable(tf.zeros(shape), true, `${this.prefix}/${name}`)]));
  }

  /** The Map name -> {shape, dtype} a global payload must match. */
  expected() {
    return new Map(this.spec.map(([name, shape]) => [name, { shape, dtype: 'float32' }]));
  }

  /** Load decoded wire tensors [{name, values}] (after decodePayload checked names and shapes). */
  load(tensors) {
    for (const t of tensors) this.vars[t.name].assign(tf.tensor(t.values, t.shape, 'float32'));
  }

  /** The parameters as wire tensors [{name, shape, dtype, values}] in state-dict order. */
  async state() {
    const out = [];
    for (const [name, shape] of this.spec) out.push({ name, shape, dtype: 'float32', values: await this.vars[name].data() });
    return out;
  }

  logits(x) {
    return this.forward(this.vars, x);
  }

  /** An SGD optimizer with torch.optim.SGD's update (momentum 0.9, weight decay 5e-4). */
  sgd(lr, { momentum = 0.9, weightDecay = 5e-4 } = {}) {
    const bufs = {};
    return (grads) => {
      tf.tidy(() => {
        for (const [name] of this.spec) {
          const p = this.vars[name];
          const g = tf.add(grads[name], tf.mul(p, weightDecay));
          const buf = bufs[name] ? tf.add(tf.mul(bufs[name], momentum), g) : g;
          if (bufs[name]) bufs[name].dispose();
          bufs[name] = tf.keep(buf);
          p.assign(tf.sub(p, tf.mul(buf, lr)));
        }
      });
    };
  }

  /** One step on a batch: returns [loss, number correct]; `step` is an sgd() updater. */
  trainStep(step, xs, ys) {
    const list = this.spec.map(([name]) => this.vars[name]);
    let correct = 0;
    const loss = tf.tidy(() => {
      const { value, grads } = tf.variableGrads(() => {
        const logits = this.logits(xs);
        correct = tf.keep(tf.sum(tf.cast(tf.equal(tf.argMax(logits, 1), ys), 'int32')));
        return crossEntropy(logits, ys);
      }, list);
      const named = {};
      for (const [name] of this.spec) named[name] = grads[`${this.prefix}/${name}`];
      step(named);
      return value;
    });
    const l = loss.dataSync()[0];
    const c = correct.dataSync()[0];
    loss.dispose();
    correct.dispose();
    return [l, c];
  }

  /**
   * Local training as fedcore.loops.train: `epochs` passes over (x: Float32Array N*64, y: Int32Array N)
   * in shuffled batches. Returns {train_loss, train_accuracy}. `onBatch` lets the page stay responsive.
   */
  async train(x, y, { epochs = 1, batchSize = 32, lr = 0.05, seed = 0, onBatch = null } = {}) {
    const n = y.length;
    const dim = x.length / n;
    const step = this.sgd(lr);
    const rand = mulberry32(seed);
    let total = 0;
    let seen = 0;
    let correct = 0;
    for (let e = 0; e < epochs; e++) {
      const order = shuffledOrder(n, rand);
      for (let s = 0; s < n; s += batchSize) {
        const idx = order.subarray(s, Math.min(s + batchSize, n));
        const { bx, by } = gatherBatch(x, y, idx, dim);
        const xs = tf.tensor2d(bx, [idx.length, dim]);
        const ys = tf.tensor1d(by, 'int32');
        const [l, c] = this.trainStep(step, xs, ys);
        xs.dispose();
        ys.dispose();
        total += l * idx.length;
        seen += idx.length;
        correct += c;
        if (onBatch) await onBatch(seen);
      }
    }
    return { train_loss: total / Math.max(seen, 1), train_accuracy: correct / Math.max(seen, 1) };
  }

  /** {loss, accuracy} on (x, y) without training. */
  evaluate(x, y) {
    const n = y.length;
    return tf.tidy(() => {
      const logits = this.logits(tf.tensor2d(x, [n, x.length / n]));
      const ys = tf.tensor1d(y, 'int32');
      const loss = crossEntropy(logits, ys).dataSync()[0];
      const acc = tf.mean(tf.cast(tf.equal(tf.argMax(logits, 1), ys), 'float32')).dataSync()[0];
      return { loss, accuracy: acc };
    });
  }

  dispose() {
    for (const v of Object.values(this.vars)) v.dispose();
  }
}

/** A small seeded PRNG (shuffling only). */
/** 0..n-1 in a Fisher–Yates order drawn from ``rand`` (one epoch's sample order). */
export function shuffledOrder(n, rand) {
  const order = Int32Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [order[i], order[j]] = [order[j], order[i]];
  }
  return order;
}

/** Rows ``idx`` of the flat (n, dim) features ``x`` and their labels, as one batch. */
export function gatherBatch(x, y, idx, dim) {
  const bx = new Float32Array(idx.length * dim);
  const by = new Int32Array(idx.length);
  idx.forEach((k, r) => {
    bx.set(x.subarray(k * dim, (k + 1) * dim), r * dim);
    by[r] = y[k];
  });
  return { bx, by };
}

export function mulberry32(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
