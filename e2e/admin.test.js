// The admin console in headless Chromium against the real binary with API keys: a wrong key is
// refused, a right one opens the console, which shows the connections and channel this test
// made, and a publish from its form reaches a subscriber.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { mkdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { launchChromium, skipWithoutChromium } from '../clients/js/test/support/browser.js';
import { startHerald, until, skipWithoutHerald } from '../clients/js/test/support/herald.js';

// npm `ws` from the SDK's dev packages, for subscribers outside the browser.
const WebSocket = createRequire(new URL('../clients/js/package.json', import.meta.url))('ws');
const skip = skipWithoutHerald || skipWithoutChromium;
const SCREENSHOTS = path.resolve(import.meta.dirname, '..', 'target', 'screenshots');
const KEY = 'admin-test-key-0123456789';

let server;
let browser;
before(async () => {
  if (skip) return;
  mkdirSync(SCREENSHOTS, { recursive: true });
  server = await startHerald({ config: `[api]\nkeys = ["${KEY}"]\n` });
  browser = await launchChromium();
});
after(async () => {
  await browser?.close();
  await server?.stop();
});

/** A WebSocket client subscribed to `channel`, keeping what it receives. */
async function subscriber(channel) {
  const socket = new WebSocket(`${server.url.replace('http', 'ws')}/ws`);
  const received = [];
  await new Promise((resolve, reject) => {
    socket.once('open', resolve);
    socket.once('error', reject);
  });
  socket.on('message', (text) => received.push(JSON.parse(text)));
  socket.send(JSON.stringify({ id: 1, op: 'subscribe', channel }));
  await until(() => received.some((message) => message.id === 1), 'subscribed');
  return { socket, publications: () => received.filter((message) => typeof message.offset === 'number') };
}

test('admin: a wrong key is refused, the right one sees this test\'s connections and publishes', { skip }, async () => {
  const channel = 'ops:admin-e2e';
  const subscribers = [await subscriber(channel), await subscriber(channel)];
  const context = await browser.newContext({ viewport: { width: 1200, height: 900 } });
  const page = await context.newPage();
  page.on('pageerror', (error) => console.error('page error:', error));
  await page.goto(`${server.url}/admin`);
  await page.screenshot({ path: path.join(SCREENSHOTS, 'admin-login.png') });
  await page.locator('[data-test="api-key"]').fill('not-the-key');
  await page.locator('[data-test="login"]').click();
  await page.locator('[data-test="login-error"]').waitFor();
  assert.equal(await page.locator('[data-test="channels"]').count(), 0, 'nothing shown without the key');

  await page.locator('[data-test="api-key"]').fill(KEY);
  await page.locator('[data-test="login"]').click();
  const row = page.locator(`[data-test="channels"] [data-test="channel"][data-channel="${channel}"]`);
  await row.waitFor();
  assert.equal(await row.locator('[data-test="subscribers"]').textContent(), '2');
  await until(async () => Number(await page.locator('#conn-websocket').textContent()) >= 2, 'two WebSockets counted');
  const cookies = await context.cookies();
  const session = cookies.find((cookie) => cookie.name === 'herald_admin');
  assert.ok(session.httpOnly && session.sameSite === 'Strict', JSON.stringify(session));
  await page.waitForTimeout(2500); // a chart point or two
  await page.screenshot({ path: path.join(SCREENSHOTS, 'admin.png'), fullPage: true });

  await row.locator('a').click();
  await page.locator('[data-test="publish-data"]').fill('{"text":"from the console"}');
  await page.locator('[data-test="publish"]').click();
  await page.locator('[data-test="published"]').waitFor();
  for (const { publications } of subscribers) {
    await until(() => publications().some((p) => p.data?.text === 'from the console'), 'the publish reached the subscriber');
  }
  await page.locator('[data-test="publication"]', { hasText: 'from the console' }).waitFor();
  await page.screenshot({ path: path.join(SCREENSHOTS, 'admin-channel.png'), fullPage: true });

  // Without the cookie (another browser), the feeds refuse.
  const stranger = await fetch(`${server.url}/admin/stats.json`);
  assert.equal(stranger.status, 401);
  for (const { socket } of subscribers) socket.close();
  await context.close();
});
