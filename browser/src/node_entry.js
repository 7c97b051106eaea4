// The page's training and wire code for node (tests and benchmarks), on the same wasm backend.
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-core/dist/register_all_gradients';
import { setWasmPaths } from '@tensorflow/tfjs-backend-wasm';
import { createRequire } from 'node:module';
import { dirname } from 'node:path';

export { tf };
export { Model, SPECS } from './model.js';
export { decodePayload, encodePayload } from './wire.js';
export { INPUT_DIM, STAGES, devicePart, partFor } from './parts.js';
export { cifarFromNpz, parseNpy, parseNpz } from './npz.js';
export { SplitTrainer, decodeMessage, encodeMessage, microSizes } from './split.js';
export { noneCodec } from './zstd.js';

/** Select the wasm backend (single thread, SIMD when the CPU has it). */
export async function useWasm() {
  const req = createRequire(import.meta.url);
  setWasmPaths(`${dirname(req.resolve('@tensorflow/tfjs-backend-wasm'))}/`); // the wasm beside the package
  await tf.setBackend('wasm');
  await tf.ready();
  return tf.getBackend();
}
