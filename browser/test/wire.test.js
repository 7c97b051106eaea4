// Unit tests of the JavaScript wire codec (node --test).
// With FEDCORE_FIXTURES set (tests/test_browser_codec.py does it) the codec also decodes the
// payloads Python wrote, refuses the hostile ones, and encodes the inputs Python gave it into
// FEDCORE_JS_OUT for Python to decode.
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { before, describe, test } from 'node:test';

import { crc32 } from '../src/crc32.js';
import { WireError } from '../src/errors.js';
import { filterDecode, filterEncode } from '../src/filters.js';
import { bf16FromBits, bitsFromF16, f16FromBits, f32Bits } from '../src/floats.js';
import { decodePayload, encodePayload, jsonDepth, parseStrictJson } from '../src/wire.js';
import { noneCodec } from '../src/zstd.js';
import { loadZstd } from '../src/zstd_node.js';

const FIX = process.env.FEDCORE_FIXTURES;
const OUT = process.env.FEDCORE_JS_OUT;
let codecs;
before(async () => {
  codecs = { none: noneCodec, zstd: await loadZstd() };
});

const hex = (u8) => Buffer.from(u8.buffer, u8.byteOffset, u8.byteLength).toString('hex');
const bytesOfValues = (v) => new Uint8Array(v.buffer, v.byteOffset, v.byteLength);

describe('building blocks', () => {
  test('crc32 matches zlib', () => {
    assert.equal(crc32(new TextEncoder().encode('123456789')), 0xcbf43926);
    assert.equal(crc32(new Uint8Array(0)), 0);
  });
  test('bf16 rounds to nearest even', () => {
    assert.equal(bf16FromBits(0x3f808000), 0x3f80); // tie, even kept
    assert.equal(bf16FromBits(0x3f818000), 0x3f82); // tie, odd rounds up
    assert.equal(bf16FromBits(0x3f808001), 0x3f81);
    assert.equal(bf16FromBits(0x7f7fffff), 0x7f80); // max float32 -> inf
    assert.equal(bf16FromBits(0x80000000), 0x8000);
  });
  test('fp16 rounds to nearest even, with subnormals and overflow', () => {
    assert.equal(f16FromBits(f32Bits(1)), 0x3c00);
    assert.equal(f16FromBits(f32Bits(65504)), 0x7bff);
    assert.equal(f16FromBits(f32Bits(65520)), 0x7c00); // tie at max -> inf
    assert.equal(f16FromBits(f32Bits(2 ** -24)), 0x0001);
    assert.equal(f16FromBits(f32Bits(2 ** -25)), 0x0000); // tie -> even (zero)
    assert.equal(f16FromBits(f32Bits(1.5 * 2 ** -24)), 0x0002); // tie -> even (2)
    assert.equal(bitsFromF16(0x0001), f32Bits(2 ** -24));
    assert.equal(bitsFromF16(0xfc00), 0xff800000);
  });
  test('filters are bijective for every dtype', () => {
    const raw = new Uint8Array(64).map((_, i) => (i * 37 + 11) & 0xff);
    for (const dtype of ['float32', 'bfloat16', 'float16', 'float64', 'int64', 'int32', 'int8']) {
      for (const f of ['none', 'shuffle', 'split']) {
        const enc = filterEncode(f, raw, dtype);
        assert.equal(hex(filterDecode(f, enc, dtype)), hex(raw), `${f}/${dtype}`);
      }
    }
  });
  test('json depth ignores brackets in strings', () => {
    assert.equal(jsonDepth('{"a":[1,{"b":"[[[["}]}'), 3);
    assert.equal(jsonDepth('{"a":"\\"[[[["}'), 1);
  });
  test('strict JSON: duplicate keys refused, floats kept apart from integers', () => {
    assert.throws(() => parseStrictJson('{"a":1,"b":{"a":2,"a":3}}'), /duplicate key/);
    assert.deepEqual(parseStrictJson('{"a":1,"b":{"a":2}}'), { a: 1, b: { a: 2 } });
    const v = parseStrictJson('{"n":2.0,"m":[1e3,-0.5],"s":"1.5"}');
    assert.equal(typeof v.n, 'string');
    assert.equal(v.s, '1.5');
    assert.throws(() => parseStrictJson('{"n":1.2.3}'), /bad number/);
    assert.throws(() => parseStrictJson('[[[[[[[[[1]]]]]]]]]'), /deeper/);
  });
  test('encode then decode round-trips in JS', () => {
    const t = [
      { name: 'w', shape: [2, 3], dtype: 'float32', values: Float32Array.from([0.1, -2, 3.5, 1e-3, 0, -0]) },
      { name: 'n', shape: [2], dtype: 'int64', values: BigInt64Array.from([1n, -5n]) },
    ];
    for (const codec of ['none', 'zstd']) {
      const p = encodePayload(t, { codecs, dtype: 'fp32', codec });
      const d = decodePayload(p, { codecs });
      assert.deepEqual([...d.tensors[0].values], [...t[0].values]);
      assert.deepEqual([...d.tensors[1].values], [1n, -5n]);
    }
  });
  test('hostile bytes are refused with a WireError', () => {
    const p = encodePayload([{ name: 'w', shape: [4], dtype: 'float32', values: new Float32Array(4) }], { codecs, codec: 'zstd' });
    assert.throws(() => decodePayload(p.subarray(0, p.length - 1), { codecs }), WireError);
    assert.throws(() => decodePayload(p.subarray(0, 10), { codecs }), /truncated/);
    const q = p.slice();
    q[q.length - 1] ^= 0xff;
    assert.throws(() => decodePayload(q, { codecs }), /checksum/);
    assert.throws(() => decodePayload(new Uint8Array([...p, 0]), { codecs }), /trailing/);
    assert.throws(() => decodePayload(p, { codecs, maxSize: 4 }), /over the 4-byte limit/);
  });
});

describe('against Python', { skip: FIX ? false : 'FEDCORE_FIXTURES not set (run tests/test_browser_codec.py)' }, () => {
  test('decodes every payload Python wrote, bit-exact', () => {
    const cases = JSON.parse(readFileSync(join(FIX, 'cases.json'), 'utf8'));
    assert.ok(cases.length >= 18);
    for (const c of cases) {
      const { header, tensors } = decodePayload(new Uint8Array(readFileSync(join(FIX, c.file))), { codecs });
      assert.equal(header.version, 2);
      for (const t of tensors) {
        const want = c.tensors[t.name];
        assert.deepEqual(t.shape, want.shape, `${c.file} ${t.name}`);
        assert.equal(hex(bytesOfValues(t.values)), want.hex, `${c.file} ${t.name}`);
      }
    }
  });
  test('refuses every hostile payload with its reason', () => {
    const hostile = JSON.parse(readFileSync(join(FIX, 'hostile.json'), 'utf8'));
    assert.ok(hostile.length >= 10);
    for (const h of hostile) {
      const bytes = new Uint8Array(readFileSync(join(FIX, h.file)));
      assert.throws(() => decodePayload(bytes, { codecs, maxSize: h.max_size ?? 1 << 20 }), (e) => {
        assert.ok(e instanceof WireError, `${h.file}: ${e}`);
        assert.match(e.message, new RegExp(h.match), h.file);
        return true;
      });
    }
  });
  test('gives a verdict on every payload of the fuzz corpus (compared in Python)', { skip: OUT ? false : 'FEDCORE_JS_OUT not set' }, () => {
    const corpus = JSON.parse(readFileSync(join(FIX, 'corpus.json'), 'utf8'));
    const expected = new Map(corpus.spec.map(([name, shape, dtype]) => [name, { shape, dtype }]));
    const verdicts = {};
    for (const file of corpus.files) {
      try {
        const { tensors } = decodePayload(new Uint8Array(readFileSync(join(FIX, file))), { codecs, expected, maxSize: 1 << 24 });
        verdicts[file] = { ok: true, tensors: Object.fromEntries(tensors.map((t) => [t.name, hex(bytesOfValues(t.values))])) };
      } catch (e) {
        assert.ok(e instanceof WireError, `${file}: not a WireError: ${e.stack}`);
        verdicts[file] = { ok: false, error: e.message };
      }
    }
    if (!existsSync(OUT)) mkdirSync(OUT, { recursive: true });
    writeFileSync(join(OUT, 'corpus_verdicts.json'), JSON.stringify(verdicts));
  });
  test('encodes the inputs for Python to decode', { skip: OUT ? false : 'FEDCORE_JS_OUT not set' }, () => {
    const inp = JSON.parse(readFileSync(join(FIX, 'input.json'), 'utf8'));
    const tensors = inp.tensors.map((t) => {
      const buf = Buffer.from(t.hex, 'hex');
      const ab = buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength);
      const ctor = { float32: Float32Array, int64: BigInt64Array, int32: Int32Array, uint8: Uint8Array, bool: Uint8Array }[t.dtype];
      return { name: t.name, shape: t.shape, dtype: t.dtype, values: new ctor(ab) };
    });
    if (!existsSync(OUT)) mkdirSync(OUT, { recursive: true });
    for (const dtype of ['fp32', 'bf16', 'fp16']) {
      for (const filter of ['none', 'shuffle', 'split', 'auto']) {
        for (const codec of ['none', 'zstd']) {
          const p = encodePayload(tensors, { codecs, dtype, filter, codec, meta: { client: 'node' } });
          writeFileSync(join(OUT, `${dtype}_${filter}_${codec}.fcw`), p);
        }
      }
    }
    assert.equal(readdirSync(OUT).filter((f) => f.endsWith('.fcw') && !f.startsWith('step_')).length, 24);
  });
});
