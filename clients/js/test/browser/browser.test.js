// The SDK in headless Chromium (Debian's, driven by playwright-core), importing /client.js
// from Herald itself: recovery across cut connections, fallback WebSocket → SSE → long-poll when
// the page cannot use them, token renewal through getToken, and recovered:false after the
// memory engine restarted.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import { Herald } from '../../herald.js';
import { launchChromium, skipWithoutChromium } from '../support/browser.js';
import { startHerald, startProxy, publish, makeToken, sleep, until, skipWithoutHerald } from '../support/herald.js';

const skip = skipWithoutHerald || skipWithoutChromium;
const SECRET = 'browser-test-secret-of-at-least-32-chars';
const API_KEY = 'browser-test-api-key';

let server;
let proxy;
let browser;
before(async () => {
  if (skip) return;
  server = await startHerald();
  proxy = await startProxy(server.port);
  browser = await launchChromium();
});
after(async () => {
  await browser?.close();
  await proxy?.close();
  await server?.stop();
});

/**
 * A page on `origin` (an empty document answered by the test, so nothing else runs in it) with
 * the SDK imported from `${origin}/client.js` and a Herald subscribed to `channel`; what it
 * receives is kept in `window.seen`.
 */
async function openPage(origin, channel, options = {}, setup = async () => {}) {
  const context = await browser.newContext();
  const page = await context.newPage();
  page.on('pageerror', (error) => console.error('page error:', error));
  await setup(page);
  await page.route(`${origin}/blank`, (route) =>
    route.fulfill({ contentType: 'text/html', body: '<!doctype html><title>herald test</title><body></body>' }),
  );
  await page.goto(`${origin}/blank`);
  await page.evaluate(
    async ({ channel, options }) => {
      const { Herald } = await import('/client.js');
      if (options.useToken) options.getToken = () => window.mintToken();
      delete options.useToken;
      const herald = new Herald(location.origin, options);
      const seen = { offsets: [], epochs: [], subscribed: [], states: [], errors: [], transports: new Set() };
      window.seen = seen;
      window.herald = herald;
      herald.on('state', ({ state, transport }) => {
        seen.states.push(`${state}:${transport}`);
        if (state === 'connected') seen.transports.add(transport);
      });
      herald.on('error', (error) => seen.errors.push(`${error.code}: ${error.message}`));
      const sub = herald.subscribe(channel);
      sub.on('publication', (publication) => {
        seen.offsets.push(publication.offset);
        seen.epochs.push(publication.epoch);
      });
      sub.on('subscribed', (event) => seen.subscribed.push(event));
    },
    { channel, options },
  );
  const seen = () => page.evaluate(() => ({ ...window.seen, transports: [...window.seen.transports] }));
  return { page, context, seen };
}

const range = (count) => Array.from({ length: count }, (_, index) => index + 1);
const quick = { minReconnectDelay: 50, maxReconnectDelay: 500 };

test('100 publications at 20/s while the network is cut three times: offsets 1..100 once, in order', { skip }, async () => {
  const channel = 'test:browser-cuts';
  const { context, seen } = await openPage(proxy.url, channel, quick);
  await until(async () => (await seen()).subscribed.length === 1, 'subscribed');
  for (let n = 1; n <= 100; n += 1) {
    await publish(server.url, channel, { n });
    if (n % 25 === 0 && n < 100) proxy.cut();
    await sleep(50);
  }
  await until(async () => (await seen()).offsets.length >= 100, 'all 100 in the page');
  await sleep(200);
  const result = await seen();
  assert.deepEqual(result.offsets, range(100));
  assert.deepEqual(result.transports, ['websocket'], result.states.join(' ') + result.errors.join(' / '));
  assert.ok(result.states.filter((state) => state.startsWith('connected')).length >= 4, result.states.join(' '));
  await context.close();
});

test('WebSocket blocked: SSE; SSE blocked too: long-polling; nothing lost or twice; the page publishes', { skip }, async () => {
  const channel = 'test:browser-fallback';
  let sseBlocked = false;
  const { page, context, seen } = await openPage(proxy.url, channel, quick, async (page) => {
    // The WebSocket is closed before it reaches Herald, as a proxy that refuses them would.
    await page.routeWebSocket(/\/ws$/, (ws) => ws.close({ code: 1006 === 0 ? 1000 : 1011, reason: 'blocked by the test' }));
    await page.route(/\/sse\?/, (route) => (sseBlocked ? route.abort('connectionreset') : route.continue()));
  });
  await until(async () => (await seen()).transports.includes('sse'), 'the fallback to SSE');
  for (let n = 1; n <= 20; n += 1) {
    await publish(server.url, channel, { n });
    await sleep(25);
  }
  await until(async () => (await seen()).offsets.length >= 20, '20 over SSE');
  sseBlocked = true;
  proxy.cut(); // the stream breaks; opening it again now fails
  for (let n = 21; n <= 40; n += 1) {
    await publish(server.url, channel, { n });
    await sleep(25);
  }
  await until(async () => (await seen()).transports.includes('poll'), 'the fallback to long-polling');
  await until(async () => (await seen()).offsets.length >= 40, '40 in all');
  proxy.cut(); // a parked poll cut midway
  for (let n = 41; n <= 60; n += 1) await publish(server.url, channel, { n });
  await until(async () => (await seen()).offsets.length >= 60, '60 in all');

  // A publish from the page (over POST /api/publish, since it is on long-polling) reaches a
  // subscriber elsewhere.
  const other = new Herald(server.url, { WebSocket });
  const received = [];
  other.subscribe(channel).on('publication', (publication) => received.push(publication.data));
  await until(() => other.state === 'connected', 'the other subscriber');
  await sleep(100);
  const reply = await page.evaluate((channel) => window.herald.publish(channel, { from: 'page' }), channel);
  assert.equal(reply.offset, 61);
  await until(() => received.some((data) => data.from === 'page'), "the page's publication elsewhere");
  other.close();

  await sleep(200);
  const result = await seen();
  assert.deepEqual(result.offsets, range(61));
  assert.deepEqual(result.transports, ['sse', 'poll']);
  assert.equal(await page.evaluate(() => window.herald.transport), 'poll');
  await context.close();
});

test('a token that expires during the test is renewed through getToken, nothing lost', { skip }, async () => {
  const secured = await startHerald({
    config: `[auth]\nhmac_secret = "${SECRET}"\n[api]\nkeys = ["${API_KEY}"]\n[namespaces.test]\nhistory_size = 1000\n`,
  });
  try {
    for (const transports of [['websocket'], ['sse']]) {
      const channel = `test:browser-token-${transports[0]}`;
      let minted = 0;
      const { context, seen } = await openPage(secured.url, channel, { ...quick, transports, useToken: true }, (page) =>
        page.exposeFunction('mintToken', () => {
          minted += 1;
          const now = Math.floor(Date.now() / 1000);
          return makeToken(SECRET, { sub: 'alice', exp: now + 5, channels: ['test:*'] });
        }),
      );
      await until(async () => (await seen()).subscribed.length >= 1, 'subscribed with a token');
      const started = Date.now();
      let n = 0;
      while (Date.now() - started < 8000) {
        n += 1;
        await publish(secured.url, channel, { n }, { Authorization: `Bearer ${API_KEY}` });
        await sleep(100);
      }
      await until(async () => (await seen()).offsets.length >= n, `all ${n}`);
      await sleep(200);
      const result = await seen();
      assert.deepEqual(result.offsets, range(n), transports[0]);
      assert.ok(minted >= 3, `getToken called ${minted} times over 8 s of 5 s tokens (${transports[0]})`);
      assert.deepEqual(result.errors, [], transports[0]);
      if (transports[0] === 'websocket') {
        // Renewed in place with `refresh`: the connection never dropped.
        assert.equal(result.states.filter((state) => state.startsWith('connected')).length, 1, result.states.join(' '));
      }
      await context.close();
    }
  } finally {
    await secured.stop();
  }
});

test('recovered:false after the memory engine restarted (history lost, new epoch)', { skip }, async () => {
  const channel = 'test:browser-restart';
  const { context, seen } = await openPage(proxy.url, channel, quick);
  await until(async () => (await seen()).subscribed.length === 1, 'subscribed');
  await publish(server.url, channel, { n: 1 });
  await until(async () => (await seen()).offsets.length === 1, 'the first publication');
  await server.restart();
  await until(async () => (await seen()).subscribed.length === 2, 'subscribed again after the restart');
  const result = await seen();
  assert.equal(result.subscribed[0].recovered, undefined);
  assert.equal(result.subscribed[1].recovered, false);
  assert.notEqual(result.subscribed[1].position.epoch, result.epochs[0]);
  await context.close();
});
