// zstd through @bokuweb/zstd-wasm's emscripten module, called at the C level so that
// decompression is bounded by the size the header declares (the package's own decompress()
// trusts the frame's content-size field, which a hostile payload controls).

import { WireError } from './errors.js';

/** A codec object {name, compress(bytes, level), decompress(bytes, rawSize)} over a ready Module. */
export function zstdCodec(Module) {
  const isError = (code) => Module._ZSTD_isError(code) !== 0;
  function withHeap(n, fn) {
    const ptr = Module._malloc(Math.max(n, 1));
    if (!ptr) throw new WireError(`zstd: cannot allocate ${n} bytes`);
    try {
      return fn(ptr);
    } finally {
      Module._free(ptr);
    }
  }
  return {
    name: 'zstd',
    compress(bytes, level = 3) {
      const bound = Module._ZSTD_compressBound(bytes.length);
      return withHeap(bytes.length, (src) => {
        Module.HEAPU8.set(bytes, src);
        return withHeap(bound, (dst) => {
          const n = Module._ZSTD_compress(dst, bound, src, bytes.length, level) >>> 0;
          if (isError(n)) throw new WireError('zstd: compression failed');
          return Module.HEAPU8.slice(dst, dst + n);
        });
      });
    },
    decompress(bytes, rawSize) {
      if (bytes.length === 0) throw new WireError('zstd: empty input is not a frame');
      return withHeap(bytes.length, (src) => {
        Module.HEAPU8.set(bytes, src);
        return withHeap(rawSize, (dst) => {
          const n = Module._ZSTD_decompress(dst, rawSize, src, bytes.length) >>> 0;
          if (isError(n)) throw new WireError('zstd: corrupt frame, or it inflates past the declared size');
          if (n !== rawSize) throw new WireError(`zstd: frame inflated to ${n} bytes, header says ${rawSize}`);
          return Module.HEAPU8.slice(dst, dst + n);
        });
      });
    },
  };
}

/** The identity codec ("none"). */
export const noneCodec = {
  name: 'none',
  compress: (bytes) => bytes.slice(),
  decompress(bytes, rawSize) {
    if (bytes.length !== rawSize) throw new WireError(`stored segment is ${bytes.length} bytes, header says ${rawSize}`);
    return bytes;
  },
};
