// Length-preserving byte filters of the wire format (compression/filters.py is the reference):
//   none    identity
//   shuffle byte planes: all byte 0s, then all byte 1s, ... (1-byte types unchanged)
//   split   floats: rotate each little-endian value left by one bit (sign next to the mantissa,
//           exponent in the top byte), then byte planes; integers: shuffle; 1-byte: unchanged.

import { WireError } from './errors.js';

/** dtype name -> [itemsize, is float] (the wire's dtypes). */
export const DTYPES = {
  float64: [8, true],
  float32: [4, true],
  float16: [2, true],
  bfloat16: [2, true],
  int64: [8, false],
  int32: [4, false],
  int16: [2, false],
  int8: [1, false],
  uint8: [1, false],
  bool: [1, false],
};

export const FILTERS = ['none', 'shuffle', 'split'];

function planes(a, k) {
  const n = a.length / k;
  const out = new Uint8Array(a.length);
  for (let j = 0; j < k; j++) {
    const base = j * n;
    for (let i = 0; i < n; i++) out[base + i] = a[i * k + j];
  }
  return out;
}

function unplanes(a, k) {
  const n = a.length / k;
  const out = new Uint8Array(a.length);
  for (let j = 0; j < k; j++) {
    const base = j * n;
    for (let i = 0; i < n; i++) out[i * k + j] = a[base + i];
  }
  return out;
}

// Rotate every k-byte little-endian value left (dir 1) or right (dir -1) by one bit, in place.
function rotate(a, k, dir) {
  const n = a.length / k;
  for (let i = 0; i < n; i++) {
    const o = i * k;
    if (dir > 0) {
      const top = a[o + k - 1] >>> 7;
      for (let b = k - 1; b > 0; b--) a[o + b] = ((a[o + b] << 1) | (a[o + b - 1] >>> 7)) & 0xff;
      a[o] = ((a[o] << 1) | top) & 0xff;
    } else {
      const low = a[o] & 1;
      for (let b = 0; b < k - 1; b++) a[o + b] = (a[o + b] >>> 1) | ((a[o + b + 1] & 1) << 7);
      a[o + k - 1] = (a[o + k - 1] >>> 1) | (low << 7);
    }
  }
  return a;
}

function itemsize(dtype) {
  const d = DTYPES[dtype];
  if (!d) throw new WireError(`unknown dtype ${JSON.stringify(dtype)}`);
  return d;
}

/** Filter raw little-endian bytes of a `dtype` array (returns a new array). */
export function filterEncode(name, bytes, dtype) {
  const [k, isFloat] = itemsize(dtype);
  if (bytes.length % k) throw new WireError(`${bytes.length} bytes is not a whole number of ${dtype}`);
  if (name === 'none' || k === 1) return bytes.slice();
  if (name === 'shuffle') return planes(bytes, k);
  if (name === 'split') return planes(isFloat ? rotate(bytes.slice(), k, 1) : bytes, k);
  throw new WireError(`unknown filter ${JSON.stringify(name)}`);
}

/** Exact inverse of filterEncode. */
export function filterDecode(name, bytes, dtype) {
  const [k, isFloat] = itemsize(dtype);
  if (bytes.length % k) throw new WireError(`${bytes.length} bytes is not a whole number of ${dtype}`);
  if (name === 'none' || k === 1) return bytes;
  if (name === 'shuffle') return unplanes(bytes, k);
  if (name === 'split') {
    const r = unplanes(bytes, k);
    return isFloat ? rotate(r, k, -1) : r;
  }
  throw new WireError(`unknown filter ${JSON.stringify(name)}`);
}
