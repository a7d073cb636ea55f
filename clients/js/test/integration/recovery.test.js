// Against the real server in Node 20 (npm `ws` for WebSocket): every transport delivers every
// publication once, in order, across connections cut by a proxy and a server restart.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';
import { EventSource } from 'eventsource';
import { Herald } from '../../herald.js';
import { startHerald, startProxy, publish, sleep, until, skipWithoutHerald } from '../support/herald.js';

let server;
let proxy;
before(async () => {
  if (skipWithoutHerald) return;
  server = await startHerald();
  proxy = await startProxy(server.port);
});
after(async () => {
  await proxy?.close();
  await server?.stop();
});

const quick = { minReconnectDelay: 50, maxReconnectDelay: 500, WebSocket };

/** Publishes `count` at `rate`/s straight to Herald, cutting the proxy `cuts` times meanwhile. */
async function publishWithCuts(channel, count, rate, cuts) {
  const cutAt = new Set(Array.from({ length: cuts }, (_, index) => Math.round(((index + 1) * count) / (cuts + 1))));
  for (let n = 1; n <= count; n += 1) {
    await publish(server.url, channel, { n });
    if (cutAt.has(n)) proxy.cut();
    await sleep(1000 / rate);
  }
}

const variants = [
  ['websocket', { transports: ['websocket'] }],
  ['sse over fetch streaming', { transports: ['sse'] }],
  ['sse over npm eventsource', { transports: ['sse'], EventSource }],
  ['poll', { transports: ['poll'], pollTimeout: 2 }],
];

for (const [name, options] of variants) {
  test(`${name}: 100 publications, 3 cuts, each once in order`, { skip: skipWithoutHerald }, async () => {
    const channel = `test:cuts-${name.replace(/\W+/g, '-')}`;
    const herald = new Herald(proxy.url, { ...quick, ...options });
    const offsets = [];
    const states = [];
    herald.on('state', ({ state }) => states.push(state));
    const sub = herald.subscribe(channel);
    sub.on('publication', (publication) => offsets.push(publication.offset));
    await until(() => herald.state === 'connected', 'connected');
    await sleep(100); // the subscription is in place (its first answer came)
    const cutsBefore = proxy.cuts;
    await publishWithCuts(channel, 100, 20, 3);
    await until(() => offsets.length >= 100, `100 publications (have ${offsets.length})`);
    await sleep(200);
    herald.close();
    assert.equal(proxy.cuts - cutsBefore, 3);
    assert.deepEqual(offsets, Array.from({ length: 100 }, (_, index) => index + 1));
    assert.ok(states.filter((state) => state === 'connected').length >= 4, `reconnected after each cut: ${states}`);
    assert.equal(herald.transport, null);
  });
}

test('a restart of the memory engine is reported as recovered:false, with the new epoch', { skip: skipWithoutHerald }, async () => {
  const herald = new Herald(proxy.url, { ...quick });
  const sub = herald.subscribe('test:restart');
  const subscribed = [];
  const offsets = [];
  sub.on('subscribed', (event) => subscribed.push(event));
  sub.on('publication', (publication) => offsets.push([publication.epoch, publication.offset]));
  await until(() => subscribed.length === 1, 'subscribed');
  await publish(server.url, 'test:restart', { n: 1 });
  await until(() => offsets.length === 1, 'the first publication');
  const before = sub.position;
  await server.restart();
  await until(() => subscribed.length === 2, 'subscribed again after the restart');
  assert.equal(subscribed[1].recovered, false);
  assert.notEqual(subscribed[1].position.epoch, before.epoch);
  await publish(server.url, 'test:restart', { n: 2 });
  await until(() => offsets.length === 2, 'a publication in the new epoch');
  assert.deepEqual(offsets[1], [subscribed[1].position.epoch, 1]);
  herald.close();
});
