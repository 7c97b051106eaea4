// Build the device page's bundle into dist/ (git-ignored): `npm ci && node build.mjs`.
//   dist/device.js                the page (tfjs-core + wasm backend + zstd + fedcore's code), one ES module
//   dist/*.wasm                   tfjs' wasm backend (SIMD and plain) and zstd, served from /device/assets
//   dist/node/train.mjs           the same training/wire code for node (tests, benchmarks)
import { build } from 'esbuild';
import { copyFileSync, mkdirSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = dirname(fileURLToPath(import.meta.url));
const DIST = join(HERE, 'dist');
const WASM = [
  'node_modules/@tensorflow/tfjs-backend-wasm/dist/tfjs-backend-wasm-simd.wasm',
  'node_modules/@tensorflow/tfjs-backend-wasm/dist/tfjs-backend-wasm.wasm',
  'node_modules/@bokuweb/zstd-wasm/dist/web/zstd.wasm',
];

export async function buildNode() {
  await build({
    entryPoints: [join(HERE, 'src/node_entry.js')],
    outfile: join(DIST, 'node/train.mjs'),
    bundle: true,
    platform: 'node',
    format: 'esm',
    logLevel: 'warning',
    banner: {
      js: "import { createRequire as __cr } from 'node:module'; import { fileURLToPath as __fu } from 'node:url'; "
        + "const require = __cr(import.meta.url); const __filename = __fu(import.meta.url); "
        + "const __dirname = __filename.slice(0, __filename.lastIndexOf('/'));",
    },
  });
  return join(DIST, 'node/train.mjs');
}

export async function buildPage() {
  await build({
    entryPoints: [join(HERE, 'src/main.js')],
    outfile: join(DIST, 'device.js'),
    bundle: true,
    platform: 'browser',
    format: 'esm',
    target: 'es2020',
    minify: true,
    legalComments: 'external',
    logLevel: 'warning',
    // node-only branches of tfjs and emscripten glue: never taken in a page
    external: ['fs', 'path', 'os', 'crypto', 'worker_threads', 'perf_hooks', 'util'],
  });
  mkdirSync(DIST, { recursive: true });
  for (const w of WASM) copyFileSync(join(HERE, w), join(DIST, w.split('/').pop()));
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  await buildPage();
  await buildNode();
  const page = ['device.js', 'tfjs-backend-wasm-simd.wasm', 'zstd.wasm'].map((f) => statSync(join(DIST, f)).size);
  console.log(`built browser/dist: device.js ${page[0]} B + simd wasm ${page[1]} B + zstd wasm ${page[2]} B = ${page.reduce((a, b) => a + b)} B`);
}
