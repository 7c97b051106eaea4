// Split mode in the page (node --test, run by tests/test_browser_split.py with FEDCORE_SPLIT_FIXTURES
// and FEDCORE_SPLIT_OUT set): split messages against fedcore.split.messages byte for byte, and a
// device-part step (forward, the edge's gradient backpropagated, one SGD step per mini-batch)
// for tests/test_browser_split.py to compare with the same step in torch.
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { before, describe, test } from 'node:test';

import { buildNode } from '../build.mjs';

const FIX = process.env.FEDCORE_SPLIT_FIXTURES;
const OUT = process.env.FEDCORE_SPLIT_OUT;
let lib;
const codecs = {};
const hexF32 = (h) => {
  const b = Buffer.from(h, 'hex');
  return new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
};
const f32Hex = (a) => Buffer.from(a.buffer, a.byteOffset, a.byteLength).toString('hex');

before(async () => {
  lib = await import(await buildNode());
  assert.equal(await lib.useWasm(), 'wasm');
  codecs.none = lib.noneCodec;
  mkdirSync(OUT, { recursive: true });
});

describe('split in the page', { skip: FIX && OUT ? false : 'FEDCORE_SPLIT_FIXTURES / FEDCORE_SPLIT_OUT not set' }, () => {
  test('micro-batch sizes are torch.tensor_split\'s', () => {
    assert.deepEqual(lib.microSizes(16, 4), [4, 4, 4, 4]);
    assert.deepEqual(lib.microSizes(10, 4), [3, 3, 2, 2]);
    assert.deepEqual(lib.microSizes(3, 4), [1, 1, 1]);
  });

  test('messages: Python\'s decode here, and this encoder writes Python\'s bytes', () => {
    const job = JSON.parse(readFileSync(join(FIX, 'messages.json'), 'utf8'));
    const out = {};
    for (const m of job.messages) {
      const bytes = new Uint8Array(readFileSync(join(FIX, m.file)));
      const got = lib.decodeMessage(bytes, { codecs, kind: m.kind, shape: m.shape, replyTo: m.meta, labels: !!m.labels });
      assert.equal(f32Hex(got.values), m.decoded, m.file);
      assert.deepEqual(got.meta, m.meta);
      if (m.labels) assert.deepEqual(Array.from(got.labels, Number), m.labels);
      assert.equal(got.loss, m.loss ?? null);
      assert.equal(got.correct, m.correct ?? null);
      const again = lib.encodeMessage({ kind: m.kind, meta: m.meta, shape: [m.meta.size, ...m.shape], values: hexF32(m.values),
        labels: m.labels ? Int32Array.from(m.labels) : null, loss: m.loss, correct: m.correct }, { codecs, dtype: m.dtype, codec: 'none' });
      out[m.file] = Buffer.from(again).toString('hex');
    }
    writeFileSync(join(OUT, 'messages.json'), JSON.stringify(out));
    for (const h of job.refused) {
      const bytes = new Uint8Array(readFileSync(join(FIX, h.file)));
      assert.throws(() => lib.decodeMessage(bytes, { codecs, kind: h.kind, shape: h.shape, replyTo: h.meta }), new RegExp(h.why), h.file);
    }
  });

  test('device-part steps against an edge that answers Python\'s gradients', async () => {
    const job = JSON.parse(readFileSync(join(FIX, 'steps.json'), 'utf8'));
    const out = {};
    for (const c of job.cases) {
      const part = lib.devicePart(c.kind, c.at);
      const m = new lib.Model(`${c.kind}@${c.at}`, part);
      const init = lib.decodePayload(new Uint8Array(readFileSync(join(FIX, c.init))), { codecs, expected: m.expected() });
      m.load(init.tensors);
      const dys = c.dy.map(hexF32);
      const acts = [];
      let sent = 0;
      const edge = async (bytes) => { // the fake edge: record the activations, answer Python's gradient
        const msg = lib.decodeMessage(bytes, { codecs, kind: 'forward', shape: c.cut, labels: true,
          replyTo: { ...c.metas[sent % c.metas.length], step: Math.floor(sent / c.metas.length) } });
        acts.push(f32Hex(msg.values));
        const i = sent++ % c.metas.length;
        return lib.encodeMessage({ kind: 'grad', meta: msg.meta, shape: [msg.meta.size, ...c.cut], values: dys[i], loss: 1.5, correct: 1 }, { codecs, dtype: 'fp32', codec: 'none' });
      };
      const trainer = new lib.SplitTrainer(m, edge, { codecs, microBatches: c.micro_batches, window: c.window, lr: c.lr, round: 1 });
      const n = c.y.length;
      const xs = lib.tf.tensor2d(hexF32(c.x), [n, lib.INPUT_DIM[c.kind]]);
      const y = Int32Array.from(c.y);
      for (let s = 0; s < c.steps; s++) {
        const r = await trainer.trainStep(xs, y, { epoch: 0, step: s });
        assert.equal(r.samples, n);
        assert.equal(r.lossSum, 1.5 * n);
      }
      xs.dispose();
      const state = await m.state();
      out[c.name] = { acts: acts.slice(0, c.metas.length), state: Object.fromEntries(state.map((t) => [t.name, f32Hex(t.values)])) };
      m.dispose();
    }
    writeFileSync(join(OUT, 'steps.json'), JSON.stringify(out));
  });
});

describe('CIFAR-10 .npz in the page', { skip: FIX && OUT ? false : 'FEDCORE_SPLIT_FIXTURES / FEDCORE_SPLIT_OUT not set' }, () => {
  test('numpy\'s savez / savez_compressed files parse; malformed ones are refused', () => {
    const job = JSON.parse(readFileSync(join(FIX, 'npz.json'), 'utf8'));
    const out = {};
    for (const f of job.good) {
      const d = lib.cifarFromNpz(new Uint8Array(readFileSync(join(FIX, f))));
      const rows = d.prepare(Float32Array.from(d.x));
      out[f] = { y: Array.from(d.y), x: f32Hex(rows) };
    }
    writeFileSync(join(OUT, 'npz.json'), JSON.stringify(out));
    for (const [f, why] of job.bad) assert.throws(() => lib.cifarFromNpz(new Uint8Array(readFileSync(join(FIX, f)))), new RegExp(why), f);
  });
});
