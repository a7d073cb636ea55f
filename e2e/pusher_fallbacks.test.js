// pusher-js in headless Chromium with WebSocket blocked for the page: it falls back to
// xhr_streaming, and with that blocked too, to xhr_polling, against Herald (never Pusher's
// hosts: every request off loopback is aborted), and still gets every event in order and
// sends client events. The page is on an origin of its own, so its requests are cross-origin
// with CORS preflights, as an app's page is.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { launchChromium, skipWithoutChromium } from '../clients/js/test/support/browser.js';
import { PusherClient, PusherServer } from '../clients/js/test/support/pusher.js';
import { startHerald, until, skipWithoutHerald } from '../clients/js/test/support/herald.js';

const skip = skipWithoutHerald || skipWithoutChromium;
const APP = { id: 'fallbacks', key: 'fallback-key', secret: 'fallback-secret' };
const ORIGIN = 'http://app.test';
const require = createRequire(new URL('../clients/js/package.json', import.meta.url));
const PUSHER_JS = readFileSync(require.resolve('pusher-js/dist/web/pusher.min.js'), 'utf8');

let server;
let browser;
let sdk;
before(async () => {
  if (skip) return;
  server = await startHerald({
    config: `[[pusher.apps]]\nid = "${APP.id}"\nkey = "${APP.key}"\nsecret = "${APP.secret}"\n`,
  });
  sdk = new PusherServer({ appId: APP.id, key: APP.key, secret: APP.secret, host: '127.0.0.1', port: String(server.port), useTLS: false });
  browser = await launchChromium();
});
after(async () => {
  await browser?.close();
  await server?.stop();
});

function page_html(port) {
  return `<!doctype html><meta charset="utf-8"><title>fallbacks</title>
<script src="/pusher.min.js"></script>
<ul id="events"></ul>
<script>
  window.received = [];
  window.pusher = new Pusher(${JSON.stringify(APP.key)}, {
    cluster: 'local', wsHost: '127.0.0.1', wsPort: ${port}, httpHost: '127.0.0.1', httpPort: ${port},
    forceTLS: false, disableStats: true, enabledTransports: ['ws', 'xhr_streaming', 'xhr_polling'],
    channelAuthorization: { endpoint: '/auth', transport: 'ajax' },
  });
  window.room = window.pusher.subscribe('private-room');
  window.room.bind('greet', (data) => {
    window.received.push(data.n);
    document.getElementById('events').insertAdjacentHTML('beforeend', '<li>greet ' + data.n + '</li>');
  });
</script>`;
}

/** A page of the app's origin with WebSocket blocked, and `blocked` fallbacks aborted. */
async function openPage(blocked) {
  const context = await browser.newContext();
  const page = await context.newPage();
  const requests = [];
  page.on('request', (request) => requests.push(request.url()));
  await context.routeWebSocket(/.*/, (socket) => socket.close());
  await context.route(/.*/, async (route) => {
    const url = new URL(route.request().url());
    if (url.origin === ORIGIN && url.pathname === '/') return route.fulfill({ contentType: 'text/html', body: page_html(server.port) });
    if (url.origin === ORIGIN && url.pathname === '/pusher.min.js') return route.fulfill({ contentType: 'text/javascript', body: PUSHER_JS });
    if (url.origin === ORIGIN && url.pathname === '/auth') {
      const form = new URLSearchParams(route.request().postData() ?? '');
      const auth = sdk.authorizeChannel(form.get('socket_id'), form.get('channel_name'));
      return route.fulfill({ contentType: 'application/json', body: JSON.stringify(auth) });
    }
    if (url.hostname !== '127.0.0.1') return route.abort();
    if (blocked.some((name) => url.pathname.endsWith(`/${name}`))) return route.abort();
    return route.continue();
  });
  await page.goto(`${ORIGIN}/`);
  return { page, context, requests };
}

for (const [transport, blocked] of [
  ['xhr_streaming', []],
  ['xhr_polling', ['xhr_streaming']],
]) {
  test(`WebSocket blocked${blocked.length ? ' and xhr_streaming too' : ''}: pusher-js on ${transport} gets every event and sends client events`, { skip, timeout: 90000 }, async () => {
    const { page, context, requests } = await openPage(blocked);
    await page.waitForFunction(() => window.room.subscribed, null, { timeout: 40000 });
    const used = await page.evaluate(() => window.pusher.connection.connection.transport.name);
    assert.equal(used, transport);
    assert.ok(requests.every((url) => url.startsWith(ORIGIN) || url.startsWith('http://127.0.0.1:')), 'no request left for Pusher\'s hosts');
    // A Node client on WebSocket, on the same channel.
    const peer = new PusherClient(APP.key, {
      cluster: 'local', wsHost: '127.0.0.1', wsPort: server.port, forceTLS: false, enabledTransports: ['ws'], disableStats: true,
      channelAuthorization: { customHandler: ({ socketId, channelName }, callback) => callback(null, sdk.authorizeChannel(socketId, channelName)) },
    });
    const peerRoom = peer.subscribe('private-room');
    const fromPage = [];
    peerRoom.bind('client-wave', (data) => fromPage.push(data.i));
    await until(() => peerRoom.subscribed, 'the peer subscribed');
    for (let n = 0; n < 30; n++) await sdk.trigger('private-room', 'greet', { n });
    await page.waitForFunction(() => window.received.length >= 30, null, { timeout: 30000 });
    assert.deepEqual(await page.evaluate(() => window.received), [...Array(30).keys()], 'every event once, in order');
    // More than pusher-js reads of one stream (256 KiB): it opens the next one on the same
    // session, and nothing is lost across the change.
    const filler = 'x'.repeat(8000);
    for (let n = 30; n < 70; n++) await sdk.trigger('private-room', 'greet', { n, filler });
    await page.waitForFunction(() => window.received.length >= 70, null, { timeout: 30000 });
    assert.deepEqual(await page.evaluate(() => window.received), [...Array(70).keys()], 'every event once, in order');
    assert.equal(await page.evaluate(() => window.pusher.connection.state), 'connected');
    await page.evaluate(() => [0, 1, 2].forEach((i) => window.room.trigger('client-wave', { i })));
    await until(() => fromPage.length === 3, 'the page\'s client events at the peer');
    assert.deepEqual(fromPage, [0, 1, 2]);
    assert.ok(requests.some((url) => url.includes(`/${transport === 'xhr_polling' ? 'xhr' : 'xhr_streaming'}?`)));
    assert.ok(requests.some((url) => url.includes('/xhr_send')));
    if (transport === 'xhr_streaming') {
      const streams = requests.filter((url) => url.includes('/xhr_streaming?'));
      assert.ok(streams.length >= 2, `the stream was reopened past 256 KiB (${streams.length} streams)`);
      assert.equal(new Set(streams.map((url) => url.split('/xhr_streaming')[0])).size, 1, 'on one session');
    }
    peer.disconnect();
    await context.close();
  });
}
