// The demo apps in headless Chromium against the real binary (HERALD_BIN), with no config at
// all, as a new user runs them: each page is driven through its data-test hooks
// (../shared/DESIGN.md, "Demo pages") and screenshotted into target/screenshots/.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync, writeFileSync, mkdtempSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { launchChromium, skipWithoutChromium } from '../clients/js/test/support/browser.js';
import { startHerald, startProxy, sleep, until, skipWithoutHerald } from '../clients/js/test/support/herald.js';

const skip = skipWithoutHerald || skipWithoutChromium;
const SCREENSHOTS = path.resolve(import.meta.dirname, '..', 'target', 'screenshots');

let server;
let proxy;
let browser;
before(async () => {
  if (skip) return;
  mkdirSync(SCREENSHOTS, { recursive: true });
  server = await startHerald({ config: '' });
  proxy = await startProxy(server.port);
  browser = await launchChromium(['--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream']);
});
after(async () => {
  await browser?.close();
  await proxy?.close();
  await server?.stop();
});

/** A page in a context of its own (its own storage: another person), at `url`, connected. */
async function open(url, { origin = server.url, connected = true } = {}) {
  const context = await browser.newContext({ viewport: { width: 1200, height: 800 }, acceptDownloads: true });
  await context.grantPermissions(['camera', 'microphone'], { origin }).catch(() => {});
  const page = await context.newPage();
  page.on('pageerror', (error) => console.error(`page error (${url}):`, error));
  await page.goto(`${origin}${url}`);
  if (connected) await page.locator('[data-test="status"]', { hasText: /^connected$/ }).waitFor({ timeout: 15000 });
  return page;
}

const hook = (page, name) => page.locator(`[data-test="${name}"]`);
const texts = (page, name) => hook(page, name).allTextContents();

async function shot(page, name) {
  await page.screenshot({ path: path.join(SCREENSHOTS, `${name}.png`), fullPage: true });
}

test('chat: two people talk, see each other, lose nothing across a cut, and a late one gets the history', { skip }, async () => {
  const room = `r${Date.now()}`;
  const ann = await open(`/demo/chat?room=${room}`);
  const bob = await open(`/demo/chat?room=${room}`, { origin: proxy.url });
  for (const [page, nick] of [[ann, 'ann'], [bob, 'bob']]) {
    await hook(page, 'nick').fill(nick);
    await hook(page, 'nick').press('Enter');
  }
  for (const page of [ann, bob]) {
    await until(async () => {
      const members = await texts(page, 'member');
      return members.includes('ann') && members.includes('bob');
    }, 'both in both presence lists');
  }
  // Typing shows on the other page (an ephemeral notice on a channel without history).
  await hook(ann, 'message-input').pressSequentially('hello bob');
  await bob.locator('#typing', { hasText: 'ann is typing' }).waitFor();
  await hook(ann, 'send').click();
  await hook(bob, 'message-input').fill('hi ann');
  await hook(bob, 'send').click();
  for (const page of [ann, bob]) {
    await until(async () => (await texts(page, 'message')).length === 2, 'two messages on each page');
  }
  assert.match((await texts(bob, 'message'))[0], /ann.*hello bob/);

  // Bob's network goes away while Ann sends five; then it comes back.
  proxy.down = true;
  proxy.cut();
  await hook(bob, 'status').filter({ hasNotText: /^connected$/ }).waitFor();
  for (let n = 1; n <= 5; n++) {
    await hook(ann, 'message-input').fill(`while you were away ${n}`);
    await hook(ann, 'send').click();
  }
  await until(async () => (await texts(ann, 'message')).length === 7, 'Ann sees her five');
  await sleep(500);
  proxy.down = false;
  await until(async () => (await texts(bob, 'message')).length >= 7, 'the five reach Bob after the cut', 30000);
  await sleep(500);
  const seen = await texts(bob, 'message');
  assert.equal(seen.length, 7, `each once: ${seen.join(' | ')}`);
  for (let n = 1; n <= 5; n++) assert.match(seen[1 + n], new RegExp(`while you were away ${n}`), 'in order');

  const late = await open(`/demo/chat?room=${room}`);
  await until(async () => (await texts(late, 'message')).length === 7, 'the late one gets the history');
  await until(async () => (await texts(late, 'member')).length === 3, 'three in the room');
  await shot(bob, 'chat');
  for (const page of [ann, bob, late]) await page.context().close();
});

test('call: two pages connect a WebRTC call signalled over Herald and receive video', { skip }, async () => {
  const room = `c${Date.now()}`;
  const pages = [await open(`/demo/call?room=${room}`, { connected: false }), await open(`/demo/call?room=${room}`, { connected: false })];
  for (const page of pages) await hook(page, 'join').click();
  for (const page of pages) {
    await hook(page, 'call-state').filter({ hasText: /^connected$/ }).waitFor({ timeout: 30000 });
    await until(() => page.evaluate(() => {
      const video = document.querySelector('[data-test="remote-video"]');
      return video.videoWidth > 0 && video.currentTime > 0;
    }), 'remote video frames');
  }
  await shot(pages[0], 'call');
  for (const page of pages) await page.context().close();
});

test('board: two players see each other and each other\'s cursor', { skip }, async () => {
  const room = `b${Date.now()}`;
  const one = await open(`/demo/board?room=${room}`);
  const two = await open(`/demo/board?room=${room}`);
  for (const page of [one, two]) await hook(page, 'peers').filter({ hasText: /^1$/ }).waitFor();
  const canvas = await hook(one, 'canvas').boundingBox();
  const moving = (async () => {
    for (let i = 0; i <= 100; i++) {
      await one.mouse.move(canvas.x + canvas.width * (0.2 + (i % 21) * 0.02), canvas.y + canvas.height * 0.5);
      await sleep(20);
    }
  })();
  await until(async () => Number(await hook(two, 'rate').textContent()) > 0, 'messages/s counted on the other page');
  await moving;
  await one.mouse.move(canvas.x + canvas.width * 0.75, canvas.y + canvas.height * 0.25);
  const name = await one.locator('#players [data-test="player"]', { hasText: '(you)' }).getAttribute('data-name');
  const seenByTwo = two.locator(`#players [data-test="player"][data-name="${name}"]`);
  await until(async () => {
    const [x, y] = [await seenByTwo.getAttribute('data-x'), await seenByTwo.getAttribute('data-y')];
    return x && Math.abs(Number(x) - 0.75) < 0.01 && Math.abs(Number(y) - 0.25) < 0.01;
  }, 'the other player sees the last move');
  await shot(two, 'board');
  for (const page of [one, two]) await page.context().close();
});

test('feed: posts and likes live for everyone, long-polling forced, history for a late joiner', { skip }, async () => {
  const first = await open('/demo/feed?transport=poll');
  assert.equal(await hook(first, 'transport').textContent(), 'poll');
  const second = await open('/demo/feed?transport=poll');
  const text = `news at ${Date.now()}`;
  await hook(first, 'post-input').fill(text);
  await hook(first, 'post').click();
  await second.locator('[data-test="feed-item"]', { hasText: text }).waitFor();
  await second.locator('[data-test="feed-item"]', { hasText: text }).locator('[data-test="like"]').click();
  await first.locator('[data-test="feed-item"]', { hasText: text }).locator('[data-test="like"]', { hasText: '♥ 1' }).waitFor();
  const late = await open('/demo/feed');
  await late.locator('[data-test="feed-item"]', { hasText: text }).locator('[data-test="like"]', { hasText: '♥ 1' }).waitFor();
  await shot(first, 'feed');
  for (const page of [first, second, late]) await page.context().close();
});

test('files: a file shared in one page downloads byte for byte in another', { skip }, async () => {
  const room = `f${Date.now()}`;
  const sender = await open(`/demo/files?room=${room}`);
  const receiver = await open(`/demo/files?room=${room}`);
  const bytes = Buffer.alloc(300_000);
  for (let i = 0; i < bytes.length; i++) bytes[i] = (i * 7919) % 256;
  const dir = mkdtempSync(path.join(os.tmpdir(), 'herald-files-'));
  const file = path.join(dir, 'report ü.bin');
  writeFileSync(file, bytes);
  await hook(sender, 'file-input').setInputFiles(file);
  const entry = receiver.locator('[data-test="file"]', { hasText: 'report ü.bin' });
  await entry.waitFor();
  const [download] = await Promise.all([receiver.waitForEvent('download'), entry.locator('[data-test="download"]').click()]);
  assert.equal(download.suggestedFilename(), 'report ü.bin');
  assert.ok(Buffer.from(readFileSync(await download.path())).equals(bytes), 'the same bytes');
  // Anyone may publish on the room's channel: a forged announcement never becomes a link to
  // run, and a stale progress note does not bring back a finished upload.
  await fetch(`${server.url}/api/publish`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ channel: `demo:files:${room}`, data: { type: 'file', id: 'forged', name: 'evil', url: 'javascript:alert(1)' } }),
  });
  await sleep(500);
  assert.equal(await receiver.locator('a[href^="javascript"]').count(), 0);
  assert.equal(await receiver.locator('[data-test="file"]', { hasText: 'evil' }).count(), 0);
  assert.equal(await receiver.locator('[data-test="upload"]').count(), 0, 'nothing left uploading');
  await shot(receiver, 'files');
  for (const page of [sender, receiver]) await page.context().close();
});

test('ticker: quotes arrive on WebSocket, SSE and long-polling alike', { skip }, async () => {
  for (const transport of ['websocket', 'sse', 'poll']) {
    const page = await open(`/demo/ticker?transport=${transport}`);
    assert.equal(await hook(page, 'transport').textContent(), transport);
    await until(async () => Number(await hook(page, 'updates').textContent()) >= 3, `three updates on ${transport}`);
    assert.ok((await hook(page, 'quote').count()) >= 3, 'a row per symbol');
    if (transport === 'sse') await shot(page, 'ticker');
    await page.context().close();
  }
});

test('live: three viewers follow the presenter, the count says 3, a late viewer catches up', { skip }, async () => {
  const room = `l${Date.now()}`;
  const presenter = await open(`/demo/live?role=presenter&room=${room}`);
  const viewers = [];
  for (let i = 0; i < 3; i++) viewers.push(await open(`/demo/live?role=viewer&room=${room}`));
  await hook(presenter, 'viewers').filter({ hasText: /^3$/ }).waitFor();
  for (const viewer of viewers) await hook(viewer, 'viewers').filter({ hasText: /^3$/ }).waitFor();
  await hook(presenter, 'next').click();
  await hook(presenter, 'next').click();
  for (const viewer of viewers) await hook(viewer, 'slide').filter({ hasText: /^3$/ }).waitFor();
  const late = await open(`/demo/live?role=viewer&room=${room}`);
  await hook(late, 'slide').filter({ hasText: /^3$/ }).waitFor();
  await hook(presenter, 'viewers').filter({ hasText: /^4$/ }).waitFor();
  await shot(viewers[0], 'live-viewer');
  await shot(presenter, 'live-presenter');
  for (const page of [presenter, ...viewers, late]) await page.context().close();
});

test('the front page links every demo, the docs and the admin console', { skip }, async () => {
  const page = await open('/', { connected: false });
  for (const demo of ['chat', 'call', 'board', 'feed', 'files', 'ticker', 'live']) {
    assert.ok(await page.locator(`main a[href="/demo/${demo}"]`).count(), demo);
  }
  for (const href of ['/admin', '/docs/protocol', '/docs/clients', '/metrics']) {
    assert.ok(await page.locator(`main a[href="${href}"]`).count(), href);
  }
  await shot(page, 'index');
  await page.goto(`${server.url}/docs/clients`);
  assert.match(await page.locator('article h1').textContent(), /Clients/);
  await shot(page, 'docs');
  await page.context().close();
});
