// Device parts of cut models (split mode): the first stages of fedcore's models, stage for stage
// as fedcore.split.cut cuts them (a model's children in order, containers opened one level), with
// the state-dict names and torch layouts of fedcore/app/models.py and fedcore/app/vit.py.
// The page trains only what it runs: the parameters of the stages up to and including the cut.

import * as tf from '@tensorflow/tfjs-core';

import { WireError } from './errors.js';
import { linear } from './model.js';

const relu = () => (p, x) => tf.relu(x);
const dense = (name, out, inp) => ({
  params: [[`${name}.weight`, [out, inp]], [`${name}.bias`, [out]]],
  fn: (p, x) => linear(x, p[`${name}.weight`], p[`${name}.bias`]),
});

/** Linear over the last axis of a (N, T, C) tensor, as nn.Linear does. */
function linear3(x, w, b) {
  const [n, t, c] = x.shape;
  return tf.reshape(linear(tf.reshape(x, [n * t, c]), w, b), [n, t, w.shape[0]]);
}

/** nn.LayerNorm over the last axis (biased variance, eps 1e-5). */
function layerNorm(x, w, b, eps = 1e-5) {
  const { mean, variance } = tf.moments(x, -1, true);
  return tf.add(tf.mul(tf.div(tf.sub(x, mean), tf.sqrt(tf.add(variance, eps))), w), b);
}

/** nn.GELU() (exact, erf form). */
const gelu = (x) => tf.mul(tf.mul(x, 0.5), tf.add(tf.erf(tf.mul(x, Math.SQRT1_2)), 1));

/** a · b for batched 3-D operands with bᵀ given explicitly (tfjs-wasm is slow with transpose flags). */
const bmm = (a, b) => tf.matMul(a, b);

// The small ViT of fedcore/app/vit.py (vit_cifar): 32x32x3 images, patch 4, dim 64, 2 heads,
// MLP ratio 2, four blocks. Images come in NHWC (N, 32*32*3), normalised like fedcore.app.data.
const VIT = { image: 32, patch: 4, dim: 64, heads: 2, mlp: 2, depth: 4, channels: 3 };

function patchEmbed() {
  const { image, patch, dim, channels } = VIT;
  const g = image / patch;
  const k = channels * patch * patch;
  return {
    params: [
      ['patch_embed.cls_token', [1, 1, dim]], ['patch_embed.pos_embed', [1, g * g + 1, dim]],
      ['patch_embed.proj.weight', [dim, channels, patch, patch]], ['patch_embed.proj.bias', [dim]],
    ],
    fn: (p, x) => {
      const n = x.shape[0];
      // (N*gy, ky, gx, kx, c) -> (N*gy, gx, c, ky, kx): one row per patch in the conv weight's (c, kh, kw) order.
      let h = tf.reshape(x, [n * g, patch, g, patch, channels]);
      h = tf.reshape(tf.transpose(h, [0, 2, 4, 1, 3]), [n * g * g, k]);
      const w = tf.reshape(p['patch_embed.proj.weight'], [dim, k]);
      const tokens = tf.reshape(linear(h, w, p['patch_embed.proj.bias']), [n, g * g, dim]);
      const cls = tf.tile(p['patch_embed.cls_token'], [n, 1, 1]);
      return tf.add(tf.concat([cls, tokens], 1), p['patch_embed.pos_embed']);
    },
  };
}

function block(i) {
  const { dim, heads, mlp } = VIT;
  const pre = `blocks.${i}`;
  const dh = dim / heads;
  const scale = dh ** -0.5;
  const names = [['norm1.weight', [dim]], ['norm1.bias', [dim]], ['attn.qkv.weight', [3 * dim, dim]], ['attn.qkv.bias', [3 * dim]],
    ['attn.proj.weight', [dim, dim]], ['attn.proj.bias', [dim]], ['norm2.weight', [dim]], ['norm2.bias', [dim]],
    ['mlp.0.weight', [mlp * dim, dim]], ['mlp.0.bias', [mlp * dim]], ['mlp.2.weight', [dim, mlp * dim]], ['mlp.2.bias', [dim]]];
  const P = (p, k) => p[`${pre}.${k}`];
  const attention = (p, x) => {
    const [n, t, c] = x.shape;
    const qkv = tf.transpose(tf.reshape(linear3(x, P(p, 'attn.qkv.weight'), P(p, 'attn.qkv.bias')), [n, t, 3, heads, dh]), [2, 0, 3, 1, 4]);
    const [q, k, v] = tf.split(qkv, 3, 0).map((a) => tf.reshape(a, [n * heads, t, dh]));
    const att = tf.softmax(tf.mul(bmm(q, tf.transpose(k, [0, 2, 1])), scale));
    const o = tf.reshape(tf.transpose(tf.reshape(bmm(att, v), [n, heads, t, dh]), [0, 2, 1, 3]), [n, t, c]);
    return linear3(o, P(p, 'attn.proj.weight'), P(p, 'attn.proj.bias'));
  };
  return {
    params: names.map(([k, s]) => [`${pre}.${k}`, s]),
    fn: (p, x) => {
      const h = tf.add(x, attention(p, layerNorm(x, P(p, 'norm1.weight'), P(p, 'norm1.bias'))));
      const m = linear3(gelu(linear3(layerNorm(h, P(p, 'norm2.weight'), P(p, 'norm2.bias')), P(p, 'mlp.0.weight'), P(p, 'mlp.0.bias'))),
        P(p, 'mlp.2.weight'), P(p, 'mlp.2.bias'));
      return tf.add(h, m);
    },
  };
}

/** Each model's stages in forward order: [stage name, {params, fn}] (the last one, the head, is never a device's). */
export const STAGES = {
  digits_mlp: [['0', dense('0', 128, 64)], ['1', { params: [], fn: relu() }], ['2', dense('2', 64, 128)],
    ['3', { params: [], fn: relu() }], ['4', dense('4', 10, 64)]],
  vit_cifar: [['patch_embed', patchEmbed()], ...Array.from({ length: VIT.depth }, (_, i) => [`blocks.${i}`, block(i)]),
    ['norm', { params: [['norm.weight', [VIT.dim]], ['norm.bias', [VIT.dim]]], fn: (p, x) => layerNorm(x, p['norm.weight'], p['norm.bias']) }],
    ['pool', { params: [], fn: (p, x) => tf.reshape(tf.slice(x, [0, 0, 0], [x.shape[0], 1, x.shape[2]]), [x.shape[0], x.shape[2]]) }],
    ['head', dense('head', 10, VIT.dim)]],
};

/** Per-sample input length each model reads (flat Float32Array rows). */
export const INPUT_DIM = { digits_mlp: 64, vit_cifar: VIT.image * VIT.image * VIT.channels };

/** Index after the cut `at` (a stage, or a container such as "blocks" = its last stage), as fedcore.split.cut. */
function cutIndex(stages, at) {
  let last = -1;
  stages.forEach(([name], i) => {
    if (name === at || name.slice(0, name.lastIndexOf('.')) === at) last = i;
  });
  return last < 0 || last >= stages.length - 1 ? -1 : last + 1;
}

/** The device part of `kind` cut after `at`: {spec: [[name, shape]], forward(p, x)} for Model. */
export function devicePart(kind, at) {
  const stages = STAGES[kind];
  if (!stages) throw new WireError(`this page cannot cut ${kind}; it cuts ${Object.keys(STAGES).join(', ')}`);
  const end = cutIndex(stages, at);
  if (end < 0) throw new WireError(`${at} is not a cut point of ${kind}`);
  const used = stages.slice(0, end).map(([, s]) => s);
  return {
    spec: used.flatMap((s) => s.params),
    forward: (p, x) => used.reduce((h, s) => s.fn(p, h), x),
  };
}

/**
 * Which model's device part a split-mode global payload holds: its tensor names against each
 * model's part at the instruction's `split_at` (or, without it, every cut whose names match, if
 * only one does). Returns {kind, at, part}.
 */
export function partFor(header, config = {}) {
  if (config.split_head_at) throw new WireError('this page does not run U-shaped splits (split_head_at): it keeps no head');
  const names = header.tensors.map((t) => t.name).sort().join(',');
  const found = [];
  for (const [kind, stages] of Object.entries(STAGES)) {
    const cuts = config.split_at ? [config.split_at] : stages.slice(0, -1).map(([n]) => n);
    for (const at of cuts) {
      if (cutIndex(stages, at) < 0) continue;
      const part = devicePart(kind, at);
      if (part.spec.map(([n]) => n).sort().join(',') === names) found.push({ kind, at, part });
    }
  }
  if (found.length === 1) return found[0];
  if (found.length > 1) throw new WireError(`the device part's tensors fit several cuts (${found.map((f) => `${f.kind}@${f.at}`).join(', ')}); the server must name split_at`);
  throw new WireError(`the server's device part (${header.tensors.length} tensors: ${header.tensors.slice(0, 3).map((t) => t.name)}…) is not one this page can train`);
}
