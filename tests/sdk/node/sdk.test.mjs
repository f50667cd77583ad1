// The official OpenAI Node SDK against a running Easel (started by the Rust test `sdk::node_sdk`).
// Environment: EASEL_BASE_URL (ending in /v1), EASEL_FIXTURES (image.png, image2.png, mask.png),
// EASEL_MODEL (default test-image), EASEL_SKIP (test names the model cannot do, one per line: names may hold commas).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import OpenAI, { toFile, NotFoundError, BadRequestError } from 'openai';

const client = new OpenAI({ baseURL: process.env.EASEL_BASE_URL, apiKey: 'sk-anything', maxRetries: 0 });
const fixture = (name) => path.join(process.env.EASEL_FIXTURES, name);
const MODEL = process.env.EASEL_MODEL || 'test-image';
const SKIP = new Set((process.env.EASEL_SKIP || '').split('\n').filter(Boolean));
const check = (name, fn) => test(name, { skip: SKIP.has(name) }, fn);

function pngSize(b64) {
  const bytes = Buffer.from(b64, 'base64');
  assert.equal(bytes.subarray(1, 4).toString(), 'PNG');
  return [bytes.readUInt32BE(16), bytes.readUInt32BE(20)];
}

check('models.list', async () => {
  const ids = [];
  for await (const model of client.models.list()) ids.push(model.id);
  assert.ok(ids.includes(MODEL), ids.join(','));
});

check('images.generate', async () => {
  const result = await client.images.generate({ model: MODEL, prompt: 'A cute baby sea otter', n: 2, size: '64x64' });
  assert.equal(result.data.length, 2);
  assert.deepEqual(pngSize(result.data[0].b64_json), [64, 64]);
  assert.ok(result.usage.input_tokens_details.text_tokens > 0);
});

check('images.edit with a file stream (streaming multipart, octet-stream)', async () => {
  const result = await client.images.edit({ model: MODEL, image: fs.createReadStream(fixture('image.png')), prompt: 'add a hat' });
  assert.equal(result.size, '64x64');
});

check('images.edit with a list of images and a mask', async () => {
  const result = await client.images.edit({
    model: MODEL,
    image: [
      await toFile(fs.createReadStream(fixture('image.png')), null, { type: 'image/png' }),
      await toFile(fs.readFileSync(fixture('image2.png')), 'b.png'),
    ],
    mask: await toFile(fs.readFileSync(fixture('mask.png')), 'mask.png', { type: 'image/png' }),
    prompt: 'paint the right half',
    output_format: 'jpeg',
  });
  assert.equal(result.output_format, 'jpeg');
  assert.equal(Buffer.from(result.data[0].b64_json, 'base64')[0], 0xff);
});

check('images.edit with a mask', async () => {
  const result = await client.images.edit({
    model: MODEL,
    image: fs.createReadStream(fixture('image.png')),
    mask: await toFile(fs.readFileSync(fixture('mask.png')), 'mask.png', { type: 'image/png' }),
    prompt: 'paint the right half',
    size: '64x64',
  });
  assert.deepEqual(pngSize(result.data[0].b64_json), [64, 64]);
});

check('images.createVariation', async () => {
  const result = await client.images.createVariation({ model: MODEL, image: fs.createReadStream(fixture('image.png')), n: 2 });
  assert.equal(result.data.length, 2);
});

check('streaming generate', async () => {
  const stream = await client.images.generate({ model: MODEL, prompt: 'p', size: '32x32', stream: true, partial_images: 2 });
  const types = [];
  for await (const event of stream) {
    types.push(event.type);
    if (event.type === 'image_generation.completed') assert.deepEqual(pngSize(event.b64_json), [32, 32]);
  }
  assert.deepEqual(types, ['image_generation.partial_image', 'image_generation.partial_image', 'image_generation.completed']);
});

check('streaming edit', async () => {
  const stream = await client.images.edit({
    model: MODEL, image: fs.createReadStream(fixture('image.png')), prompt: 'p', stream: true, partial_images: 1,
  });
  const types = [];
  for await (const event of stream) types.push(event.type);
  assert.deepEqual(types, ['image_edit.partial_image', 'image_edit.completed']);
});

check('errors', async () => {
  await assert.rejects(client.images.generate({ model: 'no-such-model', prompt: 'p' }), (e) => e instanceof NotFoundError && e.code === 'model_not_found');
  await assert.rejects(
    client.images.generate({ model: MODEL, prompt: 'p', size: '1001x1001' }),
    (e) => e instanceof BadRequestError && e.param === 'size',
  );
});
