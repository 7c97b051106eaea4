// The page's tfjs models and SGD on the wasm backend (node --test). With FEDCORE_FIXTURES set,
// a local step on Python's batch from Python's weights is written to FEDCORE_JS_OUT for
// tests/test_browser_codec.py to compare with the same step in torch.
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { before, describe, test } from 'node:test';

import { buildNode } from '../build.mjs';

const FIX = process.env.FEDCORE_FIXTURES;
const OUT = process.env.FEDCORE_JS_OUT;
let lib;
const codecs = {};
before(async () => {
  lib = await import(await buildNode());
  assert.equal(await lib.useWasm(), 'wasm');
  codecs.none = lib.noneCodec;
});

describe('models', () => {
  test('state-dict names and shapes are fedcore\'s', async () => {
    for (const kind of ['digits_mlp', 'digits_cnn']) {
      const m = new lib.Model(kind);
      const st = await m.state();
      assert.deepEqual(st.map((t) => t.name), lib.SPECS[kind].map(([n]) => n));
      const logits = m.logits(lib.tf.zeros([3, 64]));
      assert.deepEqual(logits.shape, [3, 10]);
      logits.dispose();
      m.dispose();
    }
  });
  test('training lowers the loss on a learnable batch', async () => {
    const m = new lib.Model('digits_cnn');
    m.load(lib.SPECS.digits_cnn.map(([name, shape]) => {
      const n = shape.reduce((a, b) => a * b, 1);
      return { name, shape, values: Float32Array.from({ length: n }, (_, i) => Math.sin(i * 12.9898 + n) * 0.1) };
    }));
    const x = Float32Array.from({ length: 32 * 64 }, (_, i) => ((i * 7919) % 17) / 16);
    const y = Int32Array.from({ length: 32 }, (_, i) => i % 10);
    const before = m.evaluate(x, y).loss;
    await m.train(x, y, { epochs: 5, batchSize: 8, lr: 0.05 });
    assert.ok(m.evaluate(x, y).loss < before);
    m.dispose();
  });
});

describe('against torch', { skip: FIX && OUT ? false : 'FEDCORE_FIXTURES / FEDCORE_JS_OUT not set' }, () => {
  test('local SGD steps from Python\'s weights on Python\'s batch', async () => {
    if (!existsSync(OUT)) mkdirSync(OUT, { recursive: true });
    for (const kind of ['digits_mlp', 'digits_cnn']) {
      const job = JSON.parse(readFileSync(join(FIX, `step_${kind}.json`), 'utf8'));
      const m = new lib.Model(kind);
      const init = lib.decodePayload(new Uint8Array(readFileSync(join(FIX, `step_${kind}.fcw`))), { codecs, expected: m.expected() });
      m.load(init.tensors);
      const xb = Buffer.from(job.x, 'hex');
      const x = new Float32Array(xb.buffer.slice(xb.byteOffset, xb.byteOffset + xb.byteLength));
      const xs = lib.tf.tensor2d(x, [job.y.length, 64]);
      const ys = lib.tf.tensor1d(job.y, 'int32');
      const step = m.sgd(job.lr);
      const losses = [];
      for (let s = 0; s < job.steps; s++) losses.push(m.trainStep(step, xs, ys)[0]);
      xs.dispose();
      ys.dispose();
      const payload = lib.encodePayload(await m.state(), { codecs, dtype: 'fp32', codec: 'none', meta: { losses: JSON.stringify(losses) } });
      writeFileSync(join(OUT, `step_${kind}.fcw`), payload);
      m.dispose();
    }
  });
});
