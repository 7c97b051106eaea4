// zstd for the page: the package's browser build; its wasm is served from /device/assets.
import { init } from '@bokuweb/zstd-wasm';
import { Module } from '../node_modules/@bokuweb/zstd-wasm/dist/web/module.js';
import { zstdCodec } from './zstd.js';

/** Fetch + instantiate the wasm from `url` and return the zstd codec object. */
export async function loadZstd(url) {
  await init(url);
  return zstdCodec(Module);
}
