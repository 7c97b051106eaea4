// The fedcore parameter wire format, version 2, in JavaScript (fedcore/wire.py is the reference).
//
//   magic "FCW1" | u8 version | u8 flags (0) | u16 reserved (0) | u32 header_len | u32 header_crc32
//   header: UTF-8 JSON | segment bodies, back to back, in header order
//
// One segment per wire dtype: the tensors' little-endian bytes, tiled exactly, filtered, then
// compressed. Each segment carries crc32 (of the stored body) and raw_crc32 (of the raw bytes
// after decompression and un-filtering). The decoder checks everything Python checks before it
// inflates a byte, and never inflates past the declared raw size.

import { crc32 } from './crc32.js';
import { TooLargeError, WireError } from './errors.js';
import { DTYPES, FILTERS, filterDecode, filterEncode } from './filters.js';
import { fromBf16, fromF16, toBf16, toF16 } from './floats.js';

export const WIRE_VERSION = 2;
export const LIMITS = Object.freeze({
  headerBytes: 4 * 1024 * 1024,
  depth: 8,
  tensors: 65536,
  segments: 16,
  ndim: 32,
  dim: 2 ** 48,
  nameChars: 1024,
  metaItems: 64,
  metaChars: 1024,
});
const MAGIC = [0x46, 0x43, 0x57, 0x31]; // "FCW1"
const PREFIX_BYTES = 16;
const CAST = { fp32: 'float32', bf16: 'bfloat16', fp16: 'float16', float32: 'float32', bfloat16: 'bfloat16', float16: 'float16' };
const UNTRAINED = ['running_mean', 'running_var', 'num_batches_tracked'];
const HEADER_KEYS = ['version', 'kind', 'dtype', 'codec', 'level', 'segments', 'tensors', 'meta'];
const SEGMENT_KEYS = ['dtype', 'filter', 'codec', 'raw', 'size', 'crc32', 'raw_crc32'];
// A block-framed payload (prefix flags 1, README wire format section 9): sizes and checksums are per frame.
const FRAMED_SEGMENT_KEYS = ['dtype', 'filter', 'codec', 'raw', 'block'];
const MIN_BLOCK = 65536;
const MAX_BLOCK = 67108864;
const FRAME_BYTES = 12;
const RAW_KEYS = ['name', 'shape', 'dtype', 'enc', 'wire', 'data'];
const Q8_KEYS = ['name', 'shape', 'dtype', 'enc', 'data', 'scale'];

if (new Uint8Array(new Uint16Array([1]).buffer)[0] !== 1) {
  throw new Error('fedcore wire: this device is big-endian; the wire format is little-endian');
}

const bad = (msg) => new WireError(`malformed header: ${msg}`);

/** Deepest nesting of [ and { outside strings (a linear scan, no parse). */
export function jsonDepth(text) {
  let depth = 0;
  let max = 0;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (inString) {
      if (c === 0x5c) i += 1;
      else if (c === 0x22) inString = false;
    } else if (c === 0x22) inString = true;
    else if (c === 0x5b || c === 0x7b) max = Math.max(max, ++depth);
    else if (c === 0x5d || c === 0x7d) depth -= 1;
  }
  return max;
}

const FLOAT_TAG = '\u0000f:';
const NUMBER = /^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?$/;

/**
 * JSON.parse as strict as Python's header parser: duplicate keys are refused, and a number
 * written as a float (1.0, 1e3) stays distinguishable from an integer: it comes back as the
 * string FLOAT_TAG + its text, which no integer field accepts (meta turns it back into a number).
 */
export function parseStrictJson(text) {
  const pieces = [];
  const stack = [];
  let last = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x22) {
      const start = i;
      for (i += 1; i < text.length && text.charCodeAt(i) !== 0x22; i++) if (text.charCodeAt(i) === 0x5c) i += 1;
      let j = i + 1;
      while (j < text.length && ' \t\n\r'.includes(text[j])) j++;
      const keys = stack[stack.length - 1];
      if (text[j] === ':' && keys) {
        const key = JSON.parse(text.slice(start, i + 1));
        if (keys.has(key)) throw bad(`duplicate key ${JSON.stringify(key)}`);
        keys.add(key);
      }
    } else if (c === 0x7b || c === 0x5b) {
      stack.push(c === 0x7b ? new Set() : null);
      if (stack.length > LIMITS.depth) throw bad(`nested deeper than ${LIMITS.depth}`);
    } else if (c === 0x7d || c === 0x5d) {
      stack.pop();
    } else if (c === 0x2d || (c >= 0x30 && c <= 0x39)) {
      let j = i;
      while (j < text.length && '0123456789eE+-.'.includes(text[j])) j++;
      const tok = text.slice(i, j);
      if (/[.eE]/.test(tok)) {
        if (!NUMBER.test(tok)) throw bad(`not JSON (bad number ${tok})`);
        pieces.push(text.slice(last, i), JSON.stringify(FLOAT_TAG + tok));
        last = j;
      }
      i = j - 1;
    }
  }
  pieces.push(text.slice(last));
  return JSON.parse(pieces.join(''));
}

const isFloatTag = (v) => typeof v === 'string' && v.startsWith(FLOAT_TAG);

function isObject(v) {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

function exactKeys(obj, keys, what) {
  if (!isObject(obj)) throw bad(`${what} must be an object`);
  for (const k of Object.keys(obj)) if (!keys.includes(k)) throw bad(`${what}: unknown field ${JSON.stringify(k)}`);
  for (const k of keys) if (!(k in obj)) throw bad(`${what}: missing field ${JSON.stringify(k)}`);
}

function int(v, what, lo = 0, hi = Number.MAX_SAFE_INTEGER) {
  if (isFloatTag(v)) throw bad(`${what} must be an integer, got the float ${v.slice(FLOAT_TAG.length)}`);
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < lo || v > hi) {
    throw bad(`${what} must be an integer in [${lo}, ${hi}], got ${JSON.stringify(v)}`);
  }
  return v;
}

function str(v, what, max, min = 0) {
  if (isFloatTag(v) || typeof v !== 'string' || v.length < min || v.length > max) throw bad(`${what} must be a string of ${min}..${max} characters`);
  return v;
}

function oneOf(v, options, what) {
  if (!options.includes(v)) throw bad(`${what} ${JSON.stringify(v)} is not one of ${options.join(', ')}`);
  return v;
}

function byteRef(v, what) {
  if (!Array.isArray(v) || v.length !== 3) throw bad(`${what} must be [segment, offset, length]`);
  return v.map((x, i) => int(x, `${what}[${i}]`, 0, 2 ** 53 - 1));
}

const numel = (shape) => shape.reduce((a, b) => a * b, 1);

/** Validate a parsed header as strictly as fedcore/wire.py (schema, cross-references, tiling). */
export function checkHeader(h, { codecs, allowV1 = false, framed = false } = {}) {
  const v1 = allowV1 && isObject(h) && h.version === 1;
  exactKeys(h, HEADER_KEYS, 'header');
  int(h.version, 'version', v1 ? 1 : WIRE_VERSION, v1 ? 1 : WIRE_VERSION);
  oneOf(h.kind, ['weights', 'delta'], 'kind');
  oneOf(h.dtype, ['float32', 'bfloat16', 'float16'], 'dtype');
  oneOf(h.codec, Object.keys(codecs), 'codec');
  if (h.level !== null) int(h.level, 'level', -(2 ** 31), 2 ** 31 - 1);
  if (!Array.isArray(h.segments) || h.segments.length > LIMITS.segments) throw bad(`segments must be a list of at most ${LIMITS.segments}`);
  if (!Array.isArray(h.tensors) || h.tensors.length > LIMITS.tensors) throw bad(`tensors must be a list of at most ${LIMITS.tensors}`);
  if (!isObject(h.meta) || Object.keys(h.meta).length > LIMITS.metaItems) throw bad(`meta must be an object of at most ${LIMITS.metaItems} items`);
  for (const [k, raw] of Object.entries(h.meta)) {
    str(k, 'meta key', LIMITS.metaChars);
    const val = isFloatTag(raw) ? Number(raw.slice(FLOAT_TAG.length)) : raw;
    if (typeof val === 'number' && !Number.isFinite(val)) throw bad(`meta.${k} is not a finite number`);
    h.meta[k] = val;
    const t = typeof val;
    if (!(val === null || t === 'boolean' || t === 'number' || (t === 'string' && val.length <= LIMITS.metaChars))) {
      throw bad(`meta.${k} must be a scalar`);
    }
  }
  const seen = new Set();
  h.segments.forEach((s, i) => {
    exactKeys(s, framed ? FRAMED_SEGMENT_KEYS : v1 ? SEGMENT_KEYS.filter((k) => k !== 'raw_crc32') : SEGMENT_KEYS, `segment ${i}`);
    oneOf(s.dtype, Object.keys(DTYPES), `segment ${i} dtype`);
    oneOf(s.filter, FILTERS, `segment ${i} filter`);
    oneOf(s.codec, Object.keys(codecs), `segment ${i} codec`);
    int(s.raw, `segment ${i} raw`);
    if (framed) {
      int(s.block, `segment ${i} block`, MIN_BLOCK, MAX_BLOCK);
      if (s.block & (s.block - 1)) throw bad(`segment ${i} block ${s.block} is not a power of two`);
    } else {
      int(s.size, `segment ${i} size`);
      int(s.crc32, `segment ${i} crc32`, 0, 0xffffffff);
      if (!v1) int(s.raw_crc32, `segment ${i} raw_crc32`, 0, 0xffffffff);
    }
    if (seen.has(s.dtype)) throw bad(`two segments of dtype ${s.dtype}`);
    seen.add(s.dtype);
    if (s.codec !== h.codec) throw bad(`segment ${i} uses codec ${s.codec}, the header says ${h.codec}`);
    if (!framed && s.codec === 'none' && s.size !== s.raw) throw bad(`segment ${i} is stored (codec none) but size ${s.size} != raw ${s.raw}`);
    if (s.raw % DTYPES[s.dtype][0]) throw bad(`segment ${i} raw size ${s.raw} is not a whole number of ${s.dtype}`);
  });
  const names = new Set();
  const spans = h.segments.map(() => []);
  let q8 = 0;
  for (const t of h.tensors) {
    if (!isObject(t)) throw bad('a tensor entry must be an object');
    const isQ8 = t.enc === 'q8';
    exactKeys(t, isQ8 ? Q8_KEYS : RAW_KEYS, `tensor ${JSON.stringify(t.name)}`);
    str(t.name, 'tensor name', LIMITS.nameChars, 1);
    if (!Array.isArray(t.shape) || t.shape.length > LIMITS.ndim) throw bad(`tensor ${t.name}: shape must be a list of at most ${LIMITS.ndim} dims`);
    t.shape.forEach((d, i) => int(d, `tensor ${t.name} shape[${i}]`, 0, LIMITS.dim));
    oneOf(t.dtype, Object.keys(DTYPES), `tensor ${t.name} dtype`);
    if (names.has(t.name)) throw bad(`tensor ${JSON.stringify(t.name)} appears twice`);
    names.add(t.name);
    const refs = [];
    if (isQ8) {
      q8 += 1;
      if (!DTYPES[t.dtype][1]) throw bad(`q8 tensor ${t.name} must be a float`);
      refs.push(['data', byteRef(t.data, `${t.name} data`), 'int8', numel(t.shape)]);
      refs.push(['scale', byteRef(t.scale, `${t.name} scale`), 'float32', 4 * (t.shape.length >= 2 ? t.shape[0] : 1)]);
    } else {
      oneOf(t.enc, ['raw', 'q8'], `tensor ${t.name} enc`);
      oneOf(t.wire, Object.keys(DTYPES), `tensor ${t.name} wire`);
      if (DTYPES[t.dtype][1] ? ![h.dtype, t.dtype].includes(t.wire) : t.wire !== t.dtype) {
        throw bad(`tensor ${JSON.stringify(t.name)} (${t.dtype}) cannot travel as ${t.wire}`);
      }
      refs.push(['data', byteRef(t.data, `${t.name} data`), t.wire, numel(t.shape) * DTYPES[t.wire][0]]);
    }
    for (const [what, [seg, off, n], segDtype, need] of refs) {
      if (seg >= h.segments.length) throw bad(`tensor ${JSON.stringify(t.name)} ${what} points at segment ${seg} of ${h.segments.length}`);
      if (h.segments[seg].dtype !== segDtype) throw bad(`tensor ${JSON.stringify(t.name)} ${what} needs a ${segDtype} segment`);
      if (n !== need) throw bad(`tensor ${JSON.stringify(t.name)} ${what} is ${n} bytes, its shape needs ${need}`);
      spans[seg].push([off, n, t.name]);
    }
  }
  if (h.kind === 'delta' && q8 === 0) throw bad('a delta payload holds no q8 tensor');
  if (h.kind === 'weights' && q8) throw bad('q8 tensors are only allowed in a delta payload');
  h.segments.forEach((s, i) => {
    if (!spans[i].length) throw bad(`segment ${i} is not used by any tensor`);
    spans[i].sort((a, b) => a[0] - b[0] || a[1] - b[1]);
    let cursor = 0;
    for (const [off, n, name] of spans[i]) {
      if (off !== cursor) {
        throw bad(`tensor ${JSON.stringify(name)} in segment ${i} ${off < cursor ? 'overlaps the bytes before it' : `leaves a gap of ${off - cursor} bytes`}`);
      }
      cursor += n;
    }
    if (cursor !== s.raw) throw bad(`segment ${i} declares ${s.raw} raw bytes, its tensors hold ${cursor}`);
  });
  return h;
}

/** Parse and check the prefix and JSON header: {header, offset of the first segment}. */
export function readHeader(bytes, opts) {
  if (!(bytes instanceof Uint8Array)) throw new WireError('payload must be a Uint8Array');
  if (bytes.length < PREFIX_BYTES) throw new WireError(`payload truncated: ${bytes.length} bytes is shorter than the ${PREFIX_BYTES}-byte prefix`);
  if (MAGIC.some((m, i) => bytes[i] !== m)) throw new WireError('not a fedcore payload (bad magic)');
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const version = bytes[4];
  const v1ok = opts && opts.allowV1 && version === 1;
  if (version !== WIRE_VERSION && !v1ok) throw new WireError(`unsupported wire format version ${version} (this page reads ${WIRE_VERSION})`);
  const flags = bytes[5];
  if ((flags !== 0 && !(flags === 1 && version === WIRE_VERSION)) || dv.getUint16(6, true) !== 0) {
    throw new WireError('prefix flags must be 0 or 1 (block-framed) and reserved bytes 0');
  }
  const hlen = dv.getUint32(8, true);
  if (hlen > LIMITS.headerBytes) throw new TooLargeError(`header of ${hlen} bytes is over the ${LIMITS.headerBytes}-byte limit`);
  const end = PREFIX_BYTES + hlen;
  if (bytes.length < end) throw new WireError('payload truncated inside the header');
  const hbytes = bytes.subarray(PREFIX_BYTES, end);
  if (crc32(hbytes) !== dv.getUint32(12, true)) throw new WireError('header checksum mismatch: payload corrupt');
  let text;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(hbytes);
  } catch {
    throw bad('not UTF-8');
  }
  if (jsonDepth(text) > LIMITS.depth) throw bad(`nested deeper than ${LIMITS.depth}`);
  let header;
  try {
    header = parseStrictJson(text);
  } catch (e) {
    throw e instanceof WireError ? e : bad(`not JSON (${e.message})`);
  }
  if (isObject(header) && header.version !== version) throw bad(`header version ${header.version} != prefix version ${version}`);
  return { header: checkHeader(header, { ...opts, framed: flags === 1 }), offset: end, framed: flags === 1 };
}

function checkExpected(header, expected) {
  const got = new Map(header.tensors.map((t) => [t.name, t]));
  const missing = [...expected.keys()].filter((n) => !got.has(n)).sort();
  const extra = [...got.keys()].filter((n) => !expected.has(n)).sort();
  if (missing.length || extra.length) {
    throw new WireError(`payload is for another model: missing [${missing.slice(0, 5)}], unexpected [${extra.slice(0, 5)}]`);
  }
  for (const [name, spec] of expected) {
    const t = got.get(name);
    if (t.dtype !== spec.dtype || t.shape.length !== spec.shape.length || t.shape.some((d, i) => d !== spec.shape[i])) {
      throw new WireError(`tensor ${name} is ${t.dtype}[${t.shape}] in the payload, the model expects ${spec.dtype}[${spec.shape}]`);
    }
  }
}

function floatsOf(buf, wire) {
  switch (wire) {
    case 'float32': return new Float32Array(buf);
    case 'bfloat16': return fromBf16(new Uint16Array(buf));
    case 'float16': return fromF16(new Uint16Array(buf));
    default: return null;
  }
}

function valuesOf(bytes, wire, dtype) {
  const buf = bytes.slice().buffer; // aligned copy
  const f = floatsOf(buf, wire);
  if (f) {
    // Widening is exact; a half tensor that travelled wider is rounded to its own dtype (RNE).
    if (dtype === 'float64') return Float64Array.from(f);
    if (dtype === 'bfloat16' && wire !== 'bfloat16') return fromBf16(toBf16(f));
    if (dtype === 'float16' && wire !== 'float16') return fromF16(toF16(f));
    return f;
  }
  switch (wire) {
    case 'float64': return dtype === 'float64' ? new Float64Array(buf) : Float32Array.from(new Float64Array(buf));
    case 'int64': return new BigInt64Array(buf);
    case 'int32': return new Int32Array(buf);
    case 'int16': return new Int16Array(buf);
    case 'int8': return new Int8Array(buf);
    case 'uint8': return new Uint8Array(buf);
    case 'bool': {
      const b = new Uint8Array(buf);
      if (b.some((x) => x > 1)) throw new WireError('bool bytes must be 0 or 1');
      return b;
    }
    default: throw new WireError(`unknown dtype ${wire}`);
  }
}

/**
 * Decode a payload. opts: {codecs: {name: codec}, maxSize (bytes of raw segments),
 * expected: Map name -> {shape, dtype}}. Returns {header, tensors: [{name, shape, dtype, wire, values}]};
 * float tensors come back as Float32Array (Float64Array for float64), ints as their typed arrays.
 * Throws WireError (TooLargeError for oversize) and decodes nothing unless every check passes.
 */
export function decodePayload(bytes, opts) {
  const { codecs, maxSize = 256 * 1024 * 1024, expected = null } = opts;
  const { header, offset, framed } = readHeader(bytes, opts);
  if (header.kind === 'delta') throw new WireError('payload holds a quantised update (delta); this page decodes weights only');
  const totalRaw = header.segments.reduce((a, s) => a + s.raw, 0);
  if (totalRaw > maxSize) throw new TooLargeError(`payload inflates to ${totalRaw} bytes, over the ${maxSize}-byte limit`);
  if (expected) checkExpected(header, expected);
  const raws = framed ? framedSegments(bytes, offset, header.segments, codecs) : wholeSegments(bytes, offset, header.segments, codecs);
  const tensors = header.tensors.map((t) => {
    const [seg, off, n] = t.data;
    return { name: t.name, shape: t.shape.slice(), dtype: t.dtype, wire: t.wire, values: valuesOf(raws[seg].subarray(off, off + n), t.wire, t.dtype) };
  });
  return { header, tensors };
}

/** Section 4's steps for one body: checksum, inflate within rawLen, un-filter, raw checksum. */
function inflate(what, body, s, codecs, rawLen, crc, rawCrc) {
  if (crc32(body) !== crc) throw new WireError(`${what} checksum mismatch: payload corrupt`);
  let filtered;
  try {
    filtered = codecs[s.codec].decompress(body, rawLen);
  } catch (e) {
    throw new WireError(`${what} does not decode: ${e.message}`);
  }
  const raw = filterDecode(s.filter, filtered, s.dtype);
  if (rawCrc !== undefined && crc32(raw) !== rawCrc) {
    throw new WireError(`${what} raw checksum mismatch: wrong filter, codec or dtype label`);
  }
  return raw;
}

/** Section 9: each segment's frames in order, joined into the segment's raw bytes. */
function framedSegments(bytes, offset, segments, codecs) {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let pos = offset;
  let k = 0;
  const raws = segments.map((s) => {
    const out = new Uint8Array(s.raw);
    for (let start = 0; start < s.raw; start += s.block, k++) {
      const n = Math.min(s.block, s.raw - start);
      if (pos + FRAME_BYTES > bytes.length) throw new WireError(`payload truncated: block ${k} has no frame header`);
      const size = dv.getUint32(pos, true);
      const crc = dv.getUint32(pos + 4, true);
      const rawCrc = dv.getUint32(pos + 8, true);
      pos += FRAME_BYTES;
      if ((s.codec === 'none' && size !== n) || size > n + Math.floor(n / 8) + 4096) {
        throw new TooLargeError(`block ${k} declares a ${size}-byte body for ${n} raw bytes`);
      }
      if (pos + size > bytes.length) throw new WireError(`payload truncated inside block ${k}`);
      out.set(inflate(`block ${k}`, bytes.subarray(pos, pos + size), s, codecs, n, crc, rawCrc), start);
      pos += size;
    }
    return out;
  });
  if (pos < bytes.length) throw new WireError(`${bytes.length - pos} trailing bytes after the last block`);
  return raws;
}

function wholeSegments(bytes, offset, segments, codecs) {
  const bodyBytes = segments.reduce((a, s) => a + s.size, 0);
  if (offset + bodyBytes > bytes.length) throw new WireError(`payload truncated: segments need ${bodyBytes} bytes, ${bytes.length - offset} follow the header`);
  if (offset + bodyBytes < bytes.length) throw new WireError(`${bytes.length - offset - bodyBytes} trailing bytes after the last segment`);
  let pos = offset;
  return segments.map((s, i) => {
    const body = bytes.subarray(pos, pos + s.size);
    pos += s.size;
    return inflate(`segment ${i}`, body, s, codecs, s.raw, s.crc32, s.raw_crc32);
  });
}

function bytesOf(t, wire) {
  const v = t.values;
  if (DTYPES[t.dtype][1]) {
    const f32 = v instanceof Float32Array ? v : Float32Array.from(v);
    if (wire === 'float32') return new Uint8Array(f32.buffer.slice(f32.byteOffset, f32.byteOffset + f32.byteLength));
    if (wire === 'bfloat16') return new Uint8Array(toBf16(f32).buffer);
    if (wire === 'float16') return new Uint8Array(toF16(f32).buffer);
    if (wire === 'float64') return new Uint8Array(Float64Array.from(v).buffer);
  }
  return new Uint8Array(v.buffer.slice(v.byteOffset, v.byteOffset + v.byteLength));
}

function defaultFilter(dtype) {
  const [k, isFloat] = DTYPES[dtype];
  if (k === 1) return 'none';
  return isFloat ? 'split' : 'shuffle';
}

/**
 * Encode tensors [{name, shape, dtype, values}] as a version-2 payload (kind "weights").
 * opts: {codecs, dtype ('bf16' | 'fp16' | 'fp32' ...), codec, level, filter ('auto' | name), meta}.
 */
export function encodePayload(tensors, opts) {
  const { codecs, codec = 'zstd', level = 3, filter = 'auto', meta = {} } = opts;
  const wireDtype = CAST[opts.dtype || 'bf16'];
  if (!wireDtype) throw new WireError(`unknown wire dtype ${opts.dtype}; choose fp32, bf16 or fp16`);
  const codecObj = codecs[codec];
  if (!codecObj) throw new WireError(`codec ${codec} is not available here; choose ${Object.keys(codecs).join(', ')}`);
  if (filter !== 'auto' && !FILTERS.includes(filter)) throw new WireError(`unknown filter ${filter}`);
  const segs = new Map(); // dtype -> {parts, nbytes}
  const entries = [];
  for (const t of tensors) {
    if (!DTYPES[t.dtype]) throw new WireError(`tensor ${t.name} has unsupported dtype ${t.dtype}`);
    if (numel(t.shape) !== t.values.length) throw new WireError(`tensor ${t.name}: ${t.values.length} values for shape [${t.shape}]`);
    const floating = DTYPES[t.dtype][1];
    const wire = floating && !UNTRAINED.some((s) => t.name.endsWith(s)) ? wireDtype : t.dtype;
    if (!segs.has(wire)) segs.set(wire, { parts: [], nbytes: 0 });
    const seg = segs.get(wire);
    const b = bytesOf(t, wire);
    entries.push({ name: t.name, shape: t.shape.slice(), dtype: t.dtype, enc: 'raw', wire, data: [[...segs.keys()].indexOf(wire), seg.nbytes, b.length] });
    seg.parts.push(b);
    seg.nbytes += b.length;
  }
  const bodies = [];
  const segHeaders = [];
  for (const [dtype, seg] of segs) {
    const raw = new Uint8Array(seg.nbytes);
    let o = 0;
    for (const p of seg.parts) {
      raw.set(p, o);
      o += p.length;
    }
    const filt = filter === 'auto' ? defaultFilter(dtype) : filter;
    const body = codecObj.compress(filterEncode(filt, raw, dtype), level);
    bodies.push(body);
    segHeaders.push({ dtype, filter: filt, codec: codecObj.name, raw: raw.length, size: body.length, crc32: crc32(body), raw_crc32: crc32(raw) });
  }
  const header = { version: WIRE_VERSION, kind: 'weights', dtype: wireDtype, codec: codecObj.name, level: codecObj.name === 'none' ? null : level, segments: segHeaders, tensors: entries, meta };
  const hbytes = new TextEncoder().encode(JSON.stringify(header));
  const total = PREFIX_BYTES + hbytes.length + bodies.reduce((a, b) => a + b.length, 0);
  const out = new Uint8Array(total);
  const dv = new DataView(out.buffer);
  out.set(MAGIC, 0);
  out[4] = WIRE_VERSION;
  dv.setUint32(8, hbytes.length, true);
  dv.setUint32(12, crc32(hbytes), true);
  out.set(hbytes, PREFIX_BYTES);
  let pos = PREFIX_BYTES + hbytes.length;
  for (const b of bodies) {
    out.set(b, pos);
    pos += b.length;
  }
  return out;
}
