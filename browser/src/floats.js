// Float conversions for the wire: float32 <-> bfloat16 / float16 bit patterns.
// Rounding is round-to-nearest-even, as torch's Tensor.to() does, so a browser and a Python
// client cast the same float32 weights to the same bits.

const F32 = new Float32Array(1);
const U32 = new Uint32Array(F32.buffer);

/** float32 bit pattern (uint32) -> bfloat16 bit pattern (uint16), round-to-nearest-even. */
export function bf16FromBits(u) {
  if ((u & 0x7f800000) === 0x7f800000 && (u & 0x007fffff) !== 0) {
    return ((u >>> 16) | 0x0040) & 0xffff; // NaN stays NaN (quiet), sign kept
  }
  const bias = 0x7fff + ((u >>> 16) & 1);
  return ((u + bias) >>> 16) & 0xffff;
}

/** float32 bit pattern (uint32) -> float16 bit pattern (uint16), round-to-nearest-even. */
export function f16FromBits(u) {
  const sign = (u >>> 16) & 0x8000;
  const exp = (u >>> 23) & 0xff;
  const mant = u & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x0200 | (mant >>> 13) : 0);
  const e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00; // overflow: infinity
  if (e <= 0) {
    if (e < -10) return sign; // below half the smallest subnormal: signed zero
    const m = mant | 0x800000;
    const shift = 14 - e;
    let half = m >>> shift;
    const rem = m & ((1 << shift) - 1);
    const halfway = 1 << (shift - 1);
    if (rem > halfway || (rem === halfway && (half & 1))) half += 1; // may carry into the exponent: right
    return sign | half;
  }
  let half = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && (half & 1))) half += 1; // may carry to infinity: right
  return sign | half;
}

/** float16 bit pattern -> float32 bit pattern (exact). */
export function bitsFromF16(h) {
  const sign = (h & 0x8000) << 16;
  const exp = (h >>> 10) & 0x1f;
  let mant = h & 0x3ff;
  if (exp === 0x1f) return (sign | 0x7f800000 | (mant << 13)) >>> 0;
  if (exp !== 0) return (sign | ((exp - 15 + 127) << 23) | (mant << 13)) >>> 0;
  if (mant === 0) return sign >>> 0;
  let e = -14; // subnormal: normalise
  while ((mant & 0x400) === 0) {
    mant <<= 1;
    e -= 1;
  }
  return (sign | ((e + 127) << 23) | ((mant & 0x3ff) << 13)) >>> 0;
}

/** Float32Array -> Uint16Array of bfloat16 bits. */
export function toBf16(values) {
  const bits = new Uint32Array(values.buffer, values.byteOffset, values.length);
  const out = new Uint16Array(values.length);
  for (let i = 0; i < out.length; i++) out[i] = bf16FromBits(bits[i]);
  return out;
}

/** Uint16Array of bfloat16 bits -> Float32Array (exact). */
export function fromBf16(half) {
  const out = new Float32Array(half.length);
  const bits = new Uint32Array(out.buffer);
  for (let i = 0; i < half.length; i++) bits[i] = half[i] << 16;
  return out;
}

/** Float32Array -> Uint16Array of float16 bits. */
export function toF16(values) {
  const bits = new Uint32Array(values.buffer, values.byteOffset, values.length);
  const out = new Uint16Array(values.length);
  for (let i = 0; i < out.length; i++) out[i] = f16FromBits(bits[i]);
  return out;
}

/** Uint16Array of float16 bits -> Float32Array (exact). */
export function fromF16(half) {
  const out = new Float32Array(half.length);
  const bits = new Uint32Array(out.buffer);
  for (let i = 0; i < half.length; i++) bits[i] = bitsFromF16(half[i]);
  return out;
}

/** The float32 value nearest to x, as its bit pattern (for tests and tools). */
export function f32Bits(x) {
  F32[0] = x;
  return U32[0];
}
