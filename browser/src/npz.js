// CIFAR-10 from a local .npz (numpy's savez / savez_compressed: a zip of .npy files), as the
// files in ../shared/data/cifar10 hold it: x_* uint8 (N, 32, 32, 3) NHWC RGB, y_* uint8 (N,).
// Unzipping is fflate's; the .npy header is parsed here, with every size checked against the
// bytes that are really there before a view is made.

import { unzipSync } from 'fflate';

const MAGIC = [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]; // \x93NUMPY
const DESCR = { '|u1': [Uint8Array, 1], '|i1': [Int8Array, 1], '<i4': [Int32Array, 4], '<i8': [BigInt64Array, 8], '<f4': [Float32Array, 4], '<f8': [Float64Array, 8] };
export const CIFAR_MEAN = [0.4914, 0.4822, 0.4465];
export const CIFAR_STD = [0.2470, 0.2435, 0.2616];
const MAX_HEADER = 65536;

/** Parse one .npy: {descr, shape, values (typed array over a copy of the data)}. Throws on anything malformed. */
export function parseNpy(bytes, name = 'array') {
  if (bytes.length < 10 || MAGIC.some((b, i) => bytes[i] !== b)) throw new Error(`${name}: not a .npy array`);
  const major = bytes[6];
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let hlen;
  let start;
  if (major === 1) {
    hlen = dv.getUint16(8, true);
    start = 10;
  } else if (major === 2 || major === 3) {
    if (bytes.length < 12) throw new Error(`${name}: truncated .npy header`);
    hlen = dv.getUint32(8, true);
    start = 12;
  } else {
    throw new Error(`${name}: unsupported .npy version ${major}`);
  }
  if (hlen > MAX_HEADER || start + hlen > bytes.length) throw new Error(`${name}: .npy header of ${hlen} bytes does not fit`);
  const header = new TextDecoder('latin1').decode(bytes.subarray(start, start + hlen));
  const descr = /'descr'\s*:\s*'([^']+)'/.exec(header);
  const fortran = /'fortran_order'\s*:\s*(True|False)/.exec(header);
  const shapeM = /'shape'\s*:\s*\(([^)]*)\)/.exec(header);
  if (!descr || !fortran || !shapeM) throw new Error(`${name}: .npy header lacks descr, fortran_order or shape`);
  if (fortran[1] === 'True') throw new Error(`${name}: Fortran-ordered arrays are not supported`);
  const kind = DESCR[descr[1]];
  if (!kind) throw new Error(`${name}: dtype ${descr[1]} is not supported (${Object.keys(DESCR).join(', ')})`);
  const shape = shapeM[1].split(',').map((s) => s.trim()).filter((s) => s.length).map((s) => {
    if (!/^\d+$/.test(s)) throw new Error(`${name}: bad shape entry ${s}`);
    return Number(s);
  });
  const count = shape.reduce((a, b) => a * b, 1);
  const [Ctor, size] = kind;
  const data = start + hlen;
  if (!Number.isSafeInteger(count) || count * size !== bytes.length - data) {
    throw new Error(`${name}: shape (${shape}) of ${descr[1]} needs ${count * size} bytes, the file has ${bytes.length - data}`);
  }
  const copy = bytes.slice(data); // aligned, owned
  return { descr: descr[1], shape, values: new Ctor(copy.buffer, 0, count) };
}

/** The arrays of an .npz (only those `want` names, e.g. ['x_train', 'y_train']): {name: parsed npy}. */
export function parseNpz(bytes, want = null) {
  let files;
  try {
    files = unzipSync(bytes, { filter: (f) => f.name.endsWith('.npy') && (!want || want.includes(f.name.slice(0, -4))) });
  } catch (e) {
    throw new Error(`not a readable .npz (zip) file: ${e.message}`);
  }
  const out = {};
  for (const [file, data] of Object.entries(files)) out[file.slice(0, -4)] = parseNpy(data, file);
  return out;
}

/**
 * CIFAR-10 from an .npz: {kind: 'cifar10', x: Uint8Array N*3072 (NHWC pixels), y: Int32Array N,
 * prepare(rows)} where prepare normalises a Float32Array of rows in place as fedcore.app.data
 * does (x/255 - mean) / std per channel. At most `maxSamples` rows are kept.
 */
export function cifarFromNpz(bytes, { maxSamples = Infinity } = {}) {
  const keys = ['x_train', 'y_train', 'x_test', 'y_test', 'x', 'y'];
  const a = parseNpz(bytes, keys);
  const xk = ['x_train', 'x_test', 'x'].find((k) => a[k]);
  const yk = xk && `y${xk.slice(1)}`;
  if (!xk || !a[yk]) throw new Error(`the .npz holds no CIFAR-10 arrays (expected x_train/y_train or x_test/y_test; found ${Object.keys(a).join(', ') || 'none'})`);
  const x = a[xk];
  const y = a[yk];
  if (x.descr !== '|u1' || x.shape.length !== 4 || x.shape[1] !== 32 || x.shape[2] !== 32 || x.shape[3] !== 3) {
    throw new Error(`${xk} is ${x.descr} (${x.shape}); CIFAR-10 images are uint8 (N, 32, 32, 3)`);
  }
  if (y.shape.length !== 1 || y.shape[0] !== x.shape[0]) throw new Error(`${yk} has shape (${y.shape}), expected (${x.shape[0]},)`);
  const n = Math.min(x.shape[0], maxSamples);
  const labels = Int32Array.from(y.values.subarray(0, n), Number);
  if (labels.some((l) => l < 0 || l > 9)) throw new Error(`${yk} holds labels outside 0-9`);
  return cifarData(x.values.subarray(0, n * 3072), labels);
}

/** CIFAR pixels (uint8 NHWC rows) and labels as the page's data, normalised per batch. */
export function cifarData(pixels, labels) {
  return {
    kind: 'cifar10', x: pixels, y: labels,
    prepare(rows) {
      for (let i = 0; i < rows.length; i++) {
        const c = i % 3;
        rows[i] = (rows[i] / 255 - CIFAR_MEAN[c]) / CIFAR_STD[c];
      }
      return rows;
    },
  };
}
