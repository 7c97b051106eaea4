// zstd for node (tests and benchmarks): the package's CommonJS build and its wasm file.
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { zstdCodec } from './zstd.js';

const require = createRequire(import.meta.url);

/** Load the wasm and return the zstd codec object. */
export async function loadZstd() {
  const pkg = require('@bokuweb/zstd-wasm');
  await pkg.init();
  const root = dirname(require.resolve('@bokuweb/zstd-wasm'));
  const { Module } = require(join(root, 'module.js'));
  return zstdCodec(Module);
}
