// The device's training data: a digits CSV the user picks (64 pixel values 0-16, then the label,
// per row; the UCI optdigits layout), or, for the demo, a partition fetched from the server.

import { WireError } from './errors.js';
import { cifarData } from './npz.js';
import { decodePayload } from './wire.js';

/** Parse a digits CSV into {x: Float32Array N*64 (scaled to 0..1), y: Int32Array N}. */
export function parseDigitsCsv(text) {
  const rows = text.split(/\r?\n/).map((l) => l.trim()).filter((l) => l && !l.startsWith('#'));
  const xs = [];
  const ys = [];
  rows.forEach((line, i) => {
    const v = line.split(/[,;\s]+/).map(Number);
    if (v.length !== 65 || v.some((n) => !Number.isFinite(n))) {
      if (i === 0 && v.some((n) => Number.isNaN(n))) return; // a header row
      throw new Error(`line ${i + 1}: expected 64 pixel values and a label, got ${v.length} fields`);
    }
    const label = v[64];
    if (!Number.isInteger(label) || label < 0 || label > 9) throw new Error(`line ${i + 1}: label ${label} is not 0-9`);
    xs.push(v.slice(0, 64));
    ys.push(label);
  });
  if (!ys.length) throw new Error('the file holds no rows');
  const scale = Math.max(...xs.flat()) > 1 ? 16 : 1;
  return { x: Float32Array.from(xs.flat(), (p) => p / scale), y: Int32Array.from(ys) };
}

/**
 * Decode a shard payload from /device/shard/{i}: digits (x float32 (N, 64), y int64 (N,)) or
 * CIFAR-10 (x uint8 (N, 32, 32, 3) NHWC pixels, y int64 (N,)).
 */
export function shardFromPayload(bytes, codecs) {
  const { tensors } = decodePayload(bytes, { codecs, maxSize: 256 * 1024 * 1024 });
  const x = tensors.find((t) => t.name === 'x');
  const y = tensors.find((t) => t.name === 'y');
  if (x && y && x.dtype === 'uint8' && x.shape.length === 4 && x.shape[1] === 32 && x.shape[2] === 32 && x.shape[3] === 3 && y.shape[0] === x.shape[0]) {
    const labels = Int32Array.from(y.values, Number);
    if (labels.some((l) => l < 0 || l > 9)) throw new WireError('the CIFAR shard holds labels outside 0-9');
    return cifarData(x.values, labels);
  }
  if (!x || !y || x.shape.length !== 2 || x.shape[1] !== 64 || y.shape[0] !== x.shape[0]) {
    throw new WireError('the shard is not digits data (x: (N, 64), y: (N,))');
  }
  return { x: x.values instanceof Float32Array ? x.values : Float32Array.from(x.values), y: Int32Array.from(y.values, Number) };
}
