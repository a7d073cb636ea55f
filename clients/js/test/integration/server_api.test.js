// Against the real server in Node 20: the server making and ending an SDK client's
// subscriptions. A token's `subs` become subscriptions the client never asked for, delivered
// once each, in order, across network cuts, on every transport; `POST /api/subscribe` adds one
// to a live connection; `POST /api/unsubscribe` ends one on WebSocket and on SSE (fetch
// streaming and npm `eventsource`): the subscription says so with the reason, the others go
// on, and a reconnect does not bring it back.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import { EventSource } from 'eventsource';
import { Herald } from '../../herald.js';
import { startHerald, startProxy, makeToken, publish, sleep, until, skipWithoutHerald } from '../support/herald.js';

const SECRET = 'server-api-test-secret-0123456789';
const API_KEY = 'server-api-test-key-0123456789';
const CONFIG = `
[api]
keys = ["${API_KEY}"]
[auth]
hmac_secret = "${SECRET}"
[namespaces.test]
history_size = 100
presence = true
`;

let server;
let proxy;
before(async () => {
  if (skipWithoutHerald) return;
  server = await startHerald({ config: CONFIG });
  proxy = await startProxy(server.port);
});
after(async () => {
  await proxy?.close();
  await server?.stop();
});

const auth = { Authorization: `Bearer ${API_KEY}` };

async function api(path, body) {
  const response = await fetch(`${server.url}${path}`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', ...auth },
    body: JSON.stringify(body),
  });
  assert.equal(response.status, 200, `${path}: ${await response.text()}`);
}

/** How many subscribers `channel` has on the server. */
async function subscribers(channel) {
  const response = await fetch(`${server.url}/api/channels`, { headers: auth });
  const body = await response.json();
  return body.channels.find((entry) => entry.channel === channel)?.subscribers ?? 0;
}

const variants = [
  ['websocket', { transports: ['websocket'], WebSocket }],
  ['sse over fetch streaming', { transports: ['sse'] }],
  ['sse over npm eventsource', { transports: ['sse'], EventSource }],
];

for (const [name, options] of variants) {
  test(`${name}: an unsubscribe by the server ends one subscription, for good`, { skip: skipWithoutHerald }, async () => {
    const slug = name.replace(/\W+/g, '-');
    const user = `user-${slug}`;
    const [gone, kept] = [`test:gone-${slug}`, `test:kept-${slug}`];
    const token = makeToken(SECRET, { sub: user, exp: Math.floor(Date.now() / 1000) + 600, channels: ['test:*'] });
    const herald = new Herald(proxy.url, { minReconnectDelay: 50, maxReconnectDelay: 500, token, ...options });
    const received = { [gone]: [], [kept]: [] };
    const unsubscribed = [];
    let connects = 0;
    herald.on('state', ({ state }) => state === 'connected' && (connects += 1));
    for (const channel of [gone, kept]) {
      const sub = herald.subscribe(channel);
      sub.on('publication', (publication) => received[channel].push(publication.data));
      sub.on('unsubscribed', (event) => unsubscribed.push(event));
    }
    await until(async () => (await subscribers(gone)) === 1 && (await subscribers(kept)) === 1, 'both subscribed');

    await api('/api/unsubscribe', { user, channel: gone, reason: 'moved to another room' });
    await until(() => unsubscribed.length === 1, 'the unsubscribed event');
    assert.deepEqual(unsubscribed[0], { channel: gone, reason: 'moved to another room' });
    assert.deepEqual([...herald.subscriptions.keys()], [kept]);
    assert.equal(herald.getSubscription(gone), null);

    await publish(server.url, gone, 'after', auth);
    await publish(server.url, kept, 'after', auth);
    await until(() => received[kept].length === 1, 'the kept channel goes on');
    await sleep(200);
    assert.deepEqual(received[gone], []);

    // A network drop and a reconnect: the kept channel comes back, the other does not.
    const before = connects;
    proxy.cut();
    await until(() => connects > before, 'reconnected');
    await until(async () => (await subscribers(kept)) === 1, 'the kept channel subscribed again');
    assert.equal(await subscribers(gone), 0);
    await publish(server.url, kept, 'again', auth);
    await until(() => received[kept].length === 2, 'the kept channel after the reconnect');
    assert.deepEqual(received[gone], []);
    herald.close();
  });
}

const withPoll = [...variants, ['poll', { transports: ['poll'], pollTimeout: 2 }]];

for (const [name, options] of withPoll) {
  test(`${name}: the token's subs are subscriptions the client gets without asking, each publication once`, { skip: skipWithoutHerald }, async () => {
    const slug = name.replace(/\W+/g, '-');
    const user = `subs-${slug}`;
    const [inbox, extra] = [`test:inbox-${slug}`, `test:extra-${slug}`];
    // `channels` grants nothing: the server subscribes what `subs` names.
    const token = makeToken(SECRET, { sub: user, exp: Math.floor(Date.now() / 1000) + 600, channels: [], subs: [inbox] });
    const herald = new Herald(proxy.url, { minReconnectDelay: 50, maxReconnectDelay: 500, token, ...options });
    const made = [];
    const offsets = { [inbox]: [], [extra]: [] };
    const recovered = [];
    herald.on('subscription', (sub) => {
      made.push(sub.channel);
      sub.on('publication', (publication) => offsets[sub.channel].push(publication.offset));
      sub.on('subscribed', (event) => recovered.push(event.recovered));
    });
    herald.connect();
    await until(() => herald.state === 'connected', 'connected');
    assert.deepEqual(made, [inbox]);
    await until(async () => (await subscribers(inbox)) === 1, 'the server subscribed it');

    for (let n = 1; n <= 30; n += 1) {
      await publish(server.url, inbox, { n }, auth);
      if (n === 10 || n === 20) proxy.cut();
      await sleep(40);
    }
    await until(() => offsets[inbox].length >= 30, `30 publications (have ${offsets[inbox].length})`);
    await sleep(200);
    assert.deepEqual(offsets[inbox], Array.from({ length: 30 }, (_, index) => index + 1));
    assert.ok(!recovered.includes(false), `recovered each time: ${recovered}`);

    if (name !== 'poll') {
      // The server API adds one to the live connection (polls name their channels themselves).
      await api('/api/subscribe', { user, channel: extra });
      await until(() => made.length === 2, 'the subscription the API made');
      assert.equal(made[1], extra);
      await publish(server.url, extra, 'hello', auth);
      await until(() => offsets[extra].length === 1, 'its publication');
    }
    herald.close();
  });
}
