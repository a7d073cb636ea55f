// The Pusher door against clients nobody here wrote: npm pusher-js (in Node), laravel-echo on
// top of it, and the official `pusher` server SDK, which signs its HTTP API requests and the
// channel authorizations of the auth endpoint this test runs. Herald's own API and a Herald
// WebSocket client are on the other side of the same channels.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { PusherClient, PusherServer, Echo, WebSocket } from '../clients/js/test/support/pusher.js';
import { startHerald, publish, until, sleep, freePort, skipWithoutHerald } from '../clients/js/test/support/herald.js';

const APP = { id: '4242', key: 'test-key', secret: 'test-secret' };
const CONFIG = (hooks) => `
allow_private_webhook_targets = true

[presence]
grace_period = "300ms"

[pusher]
client_event_rate = 5

[[pusher.apps]]
id = "${APP.id}"
key = "${APP.key}"
secret = "${APP.secret}"
namespace = "shop"

[[pusher.apps.webhooks]]
url = "${hooks}"

[[pusher.apps]]
id = "other"
key = "other-key"
secret = "other-secret"

[[pusher.apps]]
id = "counted"
key = "counted-key"
secret = "counted-secret"
subscription_count = true
`;

let server;
let sdk;
let authServer;
let authUrl;
const clients = [];
let hookServer;
/** Webhook calls as received: the SDK's view of each, checked with the app's secret. */
const hooks = [];

before(async () => {
  if (skipWithoutHerald) return;
  // The app's webhook receiver, as an app writes it with the server SDK.
  hookServer = http.createServer((request, response) => {
    let rawBody = '';
    request.on('data', (chunk) => (rawBody += chunk));
    request.on('end', () => {
      const webhook = sdk.webhook({ headers: request.headers, rawBody });
      const forged = new PusherServer({ appId: APP.id, key: APP.key, secret: 'not-it' }).webhook({ headers: request.headers, rawBody });
      hooks.push({ valid: webhook.isValid(), validWithOtherSecret: forged.isValid(), events: webhook.getEvents(), time: webhook.getTime() });
      response.writeHead(200).end();
    });
  });
  const hookPort = await freePort();
  await new Promise((resolve) => hookServer.listen(hookPort, '127.0.0.1', resolve));
  server = await startHerald({ config: CONFIG(`http://127.0.0.1:${hookPort}/pusher/webhooks`) });
  sdk = new PusherServer({ appId: APP.id, key: APP.key, secret: APP.secret, host: '127.0.0.1', port: String(server.port), useTLS: false });
  // The app's auth endpoint, as an app writes it with the server SDK; `user` says who asks.
  authServer = http.createServer((request, response) => {
    let body = '';
    request.on('data', (chunk) => (body += chunk));
    request.on('end', () => {
      const form = new URLSearchParams(body);
      const socketId = form.get('socket_id');
      const channel = form.get('channel_name');
      const user = form.get('user');
      if (request.url === '/pusher/user-auth') {
        const auth = sdk.authenticateUser(socketId, { id: user, user_info: { name: user } });
        if (form.get('forge')) auth.auth = `${APP.key}:${'0'.repeat(64)}`;
        response.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(auth));
        return;
      }
      if (form.get('deny')) {
        response.writeHead(403).end('forbidden');
        return;
      }
      const auth = channel.startsWith('presence-')
        ? sdk.authorizeChannel(socketId, channel, { user_id: user, user_info: { name: user.toUpperCase() } })
        : sdk.authorizeChannel(socketId, channel);
      if (form.get('forge')) auth.auth = `${APP.key}:${'0'.repeat(64)}`;
      response.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(auth));
    });
  });
  const port = await freePort();
  await new Promise((resolve) => authServer.listen(port, '127.0.0.1', resolve));
  authUrl = `http://127.0.0.1:${port}/pusher/auth`;
});

after(async () => {
  for (const client of clients) client.disconnect();
  authServer?.close();
  hookServer?.close();
  await server?.stop();
});

/** A pusher-js client on Herald's WebSocket route, authorizing as `user` (and `params`). */
function pusherClient({ user = 'anon', params = {}, key = APP.key } = {}) {
  const client = new PusherClient(key, {
    cluster: 'local',
    wsHost: '127.0.0.1',
    wsPort: server.port,
    forceTLS: false,
    enabledTransports: ['ws'],
    disableStats: true,
    channelAuthorization: { endpoint: authUrl, transport: 'ajax', params: { user, ...params } },
    userAuthentication: { endpoint: authUrl.replace('/auth', '/user-auth'), transport: 'ajax', params: { user, ...params } },
  });
  clients.push(client);
  return client;
}

function connected(client) {
  return new Promise((resolve, reject) => {
    if (client.connection.state === 'connected') return resolve();
    client.connection.bind('connected', resolve);
    client.connection.bind('failed', () => reject(new Error('connection failed')));
  });
}

/** Resolves with the channel's subscription data (at once if it has succeeded already). */
function subscribed(channel, ms = 15000) {
  return new Promise((resolve, reject) => {
    if (channel.subscribed) return resolve(channel.members ?? {});
    const timer = setTimeout(() => reject(new Error(`no subscription to ${channel.name} within ${ms} ms`)), ms);
    channel.bind('pusher:subscription_succeeded', (data) => {
      clearTimeout(timer);
      resolve(data);
    });
    channel.bind('pusher:subscription_error', (error) => {
      clearTimeout(timer);
      reject(Object.assign(new Error('subscription error'), { detail: error }));
    });
  });
}

/** Collects a channel's events of `name`. */
function collect(channel, name) {
  const seen = [];
  channel.bind(name, (data, metadata) => seen.push({ data, user_id: metadata?.user_id }));
  return seen;
}

test('public channel: server SDK trigger and Herald API publish both reach pusher-js, in order', { skip: skipWithoutHerald, timeout: 60000 }, async () => {
  const client = pusherClient();
  const channel = client.subscribe('news');
  await subscribed(channel);
  assert.match(client.connection.socket_id, /^\d+\.\d+$/);
  const greetings = collect(channel, 'greet');
  const native = collect(channel, 'herald:publication');
  for (let i = 0; i < 5; i++) await sdk.trigger('news', 'greet', { i });
  // Herald's own API, on the Herald channel of the app's namespace.
  await publish(server.url, 'shop:news', { event: 'greet', data: JSON.stringify({ i: 5 }) });
  await publish(server.url, 'shop:news', { plain: true });
  await until(() => greetings.length === 6 && native.length === 1, 'six greetings and one plain publication');
  assert.deepEqual(greetings.map((event) => event.data.i), [0, 1, 2, 3, 4, 5]);
  assert.deepEqual(native[0].data, { plain: true });
  client.disconnect();
});

test('a Pusher trigger reaches a Herald WebSocket client with positions, and the socket_id is excluded', { skip: skipWithoutHerald, timeout: 60000 }, async () => {
  const socket = new WebSocket(`ws://127.0.0.1:${server.port}/ws`);
  const messages = [];
  socket.on('message', (text) => messages.push(JSON.parse(text)));
  await new Promise((resolve) => socket.on('open', resolve));
  socket.send(JSON.stringify({ id: 1, op: 'subscribe', channel: 'shop:orders' }));
  await until(() => messages.some((message) => message.id === 1), 'the subscribe reply');
  const client = pusherClient();
  const channel = client.subscribe('orders');
  await subscribed(channel);
  const seen = collect(channel, 'created');
  await sdk.trigger('orders', 'created', { n: 1 });
  // Excluding the pusher-js socket: Herald's client gets it, pusher-js does not.
  await sdk.trigger('orders', 'created', { n: 2 }, { socket_id: client.connection.socket_id });
  await sdk.trigger('orders', 'created', { n: 3 });
  const publications = () => messages.filter((message) => message.channel === 'shop:orders');
  await until(() => publications().length === 3 && seen.length === 2, 'three publications for Herald, two for pusher-js');
  assert.deepEqual(seen.map((event) => event.data.n), [1, 3]);
  const offsets = publications().map((publication) => publication.offset);
  assert.deepEqual(offsets, [offsets[0], offsets[0] + 1, offsets[0] + 2]);
  assert.equal(publications()[1].data.event, 'created');
  assert.deepEqual(JSON.parse(publications()[1].data.data), { n: 2 });
  socket.close();
  client.disconnect();
});

test('private channel: signed through the auth endpoint; a forged or refused signature is a subscription error', { skip: skipWithoutHerald, timeout: 60000 }, async () => {
  const good = pusherClient();
  await subscribed(good.subscribe('private-orders'));
  const forged = pusherClient({ params: { forge: '1' } });
  const forgedError = await subscribed(forged.subscribe('private-orders')).then(() => null, (error) => error.detail);
  assert.equal(forgedError.type, 'AuthError');
  assert.equal(forgedError.status, 401);
  const denied = pusherClient({ params: { deny: '1' } });
  const deniedError = await subscribed(denied.subscribe('private-orders')).then(() => null, (error) => error.detail);
  assert.equal(deniedError.status, 403, 'pusher-js reports its auth endpoint\'s refusal');
  // Without an auth at all (a raw client), the server refuses too.
  const raw = new WebSocket(`ws://127.0.0.1:${server.port}/app/${APP.key}?protocol=7`);
  const events = [];
  raw.on('message', (text) => events.push(JSON.parse(text)));
  await until(() => events.length === 1, 'connection_established');
  raw.send(JSON.stringify({ event: 'pusher:subscribe', data: { channel: 'private-orders' } }));
  await until(() => events.length === 2, 'the refusal');
  assert.equal(events[1].event, 'pusher:subscription_error');
  assert.equal(events[1].data.status, 401);
  raw.close();
  for (const client of [good, forged, denied]) client.disconnect();
});

test('client events: to the other subscribers, not echoed, rate limited, refused on public channels', { skip: skipWithoutHerald, timeout: 60000 }, async () => {
  const alice = pusherClient({ user: 'alice' });
  const bob = pusherClient({ user: 'bob' });
  const aliceChannel = alice.subscribe('private-chat');
  const bobChannel = bob.subscribe('private-chat');
  await Promise.all([subscribed(aliceChannel), subscribed(bobChannel)]);
  const atBob = collect(bobChannel, 'client-typing');
  const atAlice = collect(aliceChannel, 'client-typing');
  const errors = [];
  alice.connection.bind('error', (error) => errors.push(error));
  for (let i = 0; i < 8; i++) aliceChannel.trigger('client-typing', { i });
  await until(() => atBob.length === 5 && errors.length === 3, 'five events through and three refused (rate 5/s)');
  assert.deepEqual(atBob.map((event) => event.data.i), [0, 1, 2, 3, 4]);
  assert.equal(errors[0].data.code, 4301);
  await sleep(300);
  assert.equal(atAlice.length, 0, 'not echoed to the sender');
  assert.equal(alice.connection.state, 'connected', 'a refused client event does not close the connection');
  const publicChannel = alice.subscribe('lobby');
  await subscribed(publicChannel);
  const atBobPublic = collect(bob.subscribe('lobby'), 'client-hi');
  await sleep(1100);
  publicChannel.trigger('client-hi', {});
  await until(() => errors.length === 4, 'the public channel\'s refusal');
  assert.match(errors[3].data.message, /private and presence channels/);
  await sleep(200);
  assert.equal(atBobPublic.length, 0);
  alice.disconnect();
  bob.disconnect();
});

test('presence: members once per user across connections, member_added and member_removed, users through the API', { skip: skipWithoutHerald, timeout: 60000 }, async () => {
  const bob = pusherClient({ user: 'bob' });
  const bobChannel = bob.subscribe('presence-room');
  await subscribed(bobChannel);
  const added = [];
  const removed = [];
  bobChannel.bind('pusher:member_added', (member) => added.push(member));
  bobChannel.bind('pusher:member_removed', (member) => removed.push(member));
  const alice1 = pusherClient({ user: 'alice' });
  const alice1Channel = alice1.subscribe('presence-room');
  const members = await subscribed(alice1Channel);
  assert.equal(members.count, 2);
  assert.equal(members.me.id, 'alice');
  assert.deepEqual(members.members.bob, { name: 'BOB' });
  const alice2 = pusherClient({ user: 'alice' });
  await subscribed(alice2.subscribe('presence-room'));
  await until(() => added.length === 1, 'alice added once');
  assert.deepEqual(added[0], { id: 'alice', info: { name: 'ALICE' } });
  const users = await sdk.get({ path: '/channels/presence-room/users' }).then((response) => response.json());
  assert.deepEqual(users.users.map((user) => user.id).sort(), ['alice', 'bob']);
  const info = await sdk.get({ path: '/channels/presence-room', params: { info: 'user_count,subscription_count' } }).then((r) => r.json());
  assert.deepEqual(info, { occupied: true, user_count: 2, subscription_count: 3 });
  alice1.disconnect();
  await sleep(800);
  assert.equal(removed.length, 0, 'alice is still there on her second connection');
  alice2.disconnect();
  await until(() => removed.length === 1, 'alice removed once the last connection is gone');
  assert.equal(removed[0].id, 'alice');
  assert.equal(bobChannel.members.count, 1);
  bob.disconnect();
});

test('cache channels: a miss first, then the last event for every new subscriber', { skip: skipWithoutHerald, timeout: 60000 }, async () => {
  const first = pusherClient();
  const channel = first.subscribe('cache-prices');
  const misses = [];
  channel.bind('pusher:cache_miss', () => misses.push(1));
  await subscribed(channel);
  await until(() => misses.length === 1, 'a cache miss');
  await sdk.trigger('cache-prices', 'price', { usd: 1 });
  await sdk.trigger('cache-prices', 'price', { usd: 2 });
  const later = pusherClient();
  const laterChannel = later.subscribe('cache-prices');
  const prices = collect(laterChannel, 'price');
  await subscribed(laterChannel);
  await until(() => prices.length === 1, 'the cached event');
  assert.deepEqual(prices[0].data, { usd: 2 });
  first.disconnect();
  later.disconnect();
});

test('server SDK: batches, channel lists, and signatures it did not make are refused', { skip: skipWithoutHerald, timeout: 60000 }, async () => {
  const client = pusherClient();
  const a = client.subscribe('batch-a');
  const b = client.subscribe('batch-b');
  await Promise.all([subscribed(a), subscribed(b)]);
  const seen = collect(a, 'e');
  const reply = await sdk.triggerBatch([
    { channel: 'batch-a', name: 'e', data: { n: 1 }, info: 'subscription_count' },
    { channel: 'batch-b', name: 'e', data: { n: 2 } },
  ]);
  assert.deepEqual(await reply.json(), { batch: [{ subscription_count: 1 }, {}] });
  await until(() => seen.length === 1, 'the batch event');
  const list = await sdk.get({ path: '/channels', params: { filter_by_prefix: 'batch-' } }).then((r) => r.json());
  assert.deepEqual(Object.keys(list.channels).sort(), ['batch-a', 'batch-b']);
  const wrong = new PusherServer({ appId: APP.id, key: APP.key, secret: 'not-the-secret', host: '127.0.0.1', port: String(server.port), useTLS: false });
  await assert.rejects(wrong.trigger('batch-a', 'e', {}), (error) => error.status === 401);
  // An old timestamp, signed correctly: refused by the ±600 s window.
  const realNow = Date.now;
  Date.now = () => realNow() - 3600 * 1000;
  try {
    await assert.rejects(sdk.trigger('batch-a', 'e', {}), (error) => error.status === 401 && /auth_timestamp/.test(error.body));
  } finally {
    Date.now = realNow;
  }
  // Names the SDK would not send itself, signed by it all the same.
  const bad = await sdk.post({ path: '/events', body: { name: 'e', channel: 'bad:name', data: '{}' } }).catch((error) => error);
  assert.equal(bad.status, 400);
  assert.match(bad.body, /invalid_channel/);
  assert.equal(seen.length, 1, 'nothing refused was delivered');
  client.disconnect();
});

test('subscription counting: pusher:subscription_count follows the connections of both doors, not on presence channels or apps without it', { skip: skipWithoutHerald, timeout: 60000 }, async () => {
  const counted = new PusherServer({ appId: 'counted', key: 'counted-key', secret: 'counted-secret' });
  const countingClient = () => {
    const client = new PusherClient('counted-key', {
      cluster: 'local', wsHost: '127.0.0.1', wsPort: server.port, forceTLS: false, enabledTransports: ['ws'], disableStats: true,
      channelAuthorization: {
        transport: 'ajax',
        endpoint: 'unused',
        customHandler: ({ socketId, channelName }, callback) =>
          callback(null, counted.authorizeChannel(socketId, channelName, { user_id: `u${clients.length}` })),
      },
    });
    clients.push(client);
    return client;
  };
  const counts = (channel) => {
    const seen = [];
    channel.bind('pusher:subscription_count', (data) => seen.push(data.subscription_count));
    return seen;
  };
  const first = countingClient();
  const firstViewers = first.subscribe('viewers');
  const firstCounts = counts(firstViewers);
  await subscribed(firstViewers);
  await until(() => firstCounts.at(-1) === 1, 'a count of 1 for the first subscriber');
  const second = countingClient();
  const secondViewers = second.subscribe('viewers');
  const secondCounts = counts(secondViewers);
  await subscribed(secondViewers);
  await until(() => firstCounts.at(-1) === 2 && secondCounts.at(-1) === 2, 'both hear 2');
  // A Herald WebSocket subscriber of the same channel is a connection too.
  const socket = new WebSocket(`ws://127.0.0.1:${server.port}/ws`);
  const replies = [];
  socket.on('message', (text) => replies.push(JSON.parse(text)));
  await new Promise((resolve) => socket.on('open', resolve));
  socket.send(JSON.stringify({ id: 1, op: 'subscribe', channel: 'counted:viewers' }));
  await until(() => firstCounts.at(-1) === 3 && secondCounts.at(-1) === 3, 'both hear 3');
  assert.ok(replies.every((reply) => reply.id === 1), 'the Herald client gets no count event');
  second.disconnect();
  socket.close();
  await until(() => firstCounts.at(-1) === 1, 'back to 1 once the others left');
  // Each count came once per change window, never out of range.
  assert.ok(firstCounts.every((count) => count >= 1 && count <= 3), `${firstCounts}`);

  // No counts on presence channels (they have members), nor on an app without the option.
  const room = first.subscribe('presence-room');
  const roomCounts = counts(room);
  await subscribed(room);
  const plain = pusherClient();
  const plainViewers = plain.subscribe('viewers');
  const plainCounts = counts(plainViewers);
  await subscribed(plainViewers);
  await sleep(1500);
  assert.deepEqual(roomCounts, []);
  assert.deepEqual(plainCounts, []);
  first.disconnect();
  plain.disconnect();
});

test('an unknown key is refused with 4001, which pusher-js does not retry', { skip: skipWithoutHerald, timeout: 60000 }, async () => {
  const client = pusherClient({ key: 'no-such-key' });
  const errors = [];
  client.connection.bind('error', (error) => errors.push(error));
  const states = [];
  client.connection.bind('state_change', (change) => states.push(change.current));
  await until(() => errors.some((error) => error.error?.data?.code === 4001), 'error 4001');
  await until(() => client.connection.state === 'disconnected', 'pusher-js gives up');
  await sleep(1500);
  assert.deepEqual(states, ['disconnected'], 'and does not try again');
  client.disconnect();
});

test('laravel-echo with the pusher and reverb broadcasters hears the same events', { skip: skipWithoutHerald, timeout: 60000 }, async () => {
  const options = {
    key: APP.key,
    wsHost: '127.0.0.1',
    wsPort: server.port,
    forceTLS: false,
    enabledTransports: ['ws'],
    disableStats: true,
    cluster: 'local',
    authEndpoint: authUrl,
    auth: { params: { user: 'carol' } },
    Pusher: PusherClient,
  };
  const heard = { pusher: [], reverb: [] };
  const echoes = [];
  for (const broadcaster of ['pusher', 'reverb']) {
    const echo = new Echo({ broadcaster, ...options });
    echoes.push(echo);
    echo.channel('orders.1').listen('OrderShipped', (event) => heard[broadcaster].push(['public', event]));
    echo.private('orders.1').listen('.order.paid', (event) => heard[broadcaster].push(['private', event]));
  }
  await until(
    () => echoes.every((echo) => Object.values(echo.connector.pusher.channels.channels).every((channel) => channel.subscribed)),
    'both echoes subscribed',
  );
  await sdk.trigger('orders.1', 'App\\Events\\OrderShipped', { id: 1 });
  await sdk.trigger('private-orders.1', 'order.paid', { id: 1, total: 10 });
  await until(() => heard.pusher.length === 2 && heard.reverb.length === 2, 'both events at both echoes');
  for (const events of Object.values(heard)) {
    assert.deepEqual(events, [['public', { id: 1 }], ['private', { id: 1, total: 10 }]]);
  }
  for (const echo of echoes) echo.disconnect();
});

test('user sign-in: events to the user on every connection it signed in on, then terminate_connections closes them', { skip: skipWithoutHerald, timeout: 60000 }, async () => {
  const phone = pusherClient({ user: 'dave' });
  const laptop = pusherClient({ user: 'dave' });
  const stranger = pusherClient({ user: 'erin' });
  const got = { phone: [], laptop: [], stranger: [] };
  for (const [name, client] of Object.entries({ phone, laptop, stranger })) {
    client.signin();
    client.user.bind('notice', (data) => got[name].push(data.text));
  }
  const signedIn = (client) => until(() => client.user.serverToUserChannel?.subscribed, 'signed in and following the user channel');
  await Promise.all([signedIn(phone), signedIn(laptop), signedIn(stranger)]);
  assert.equal(phone.user.user_data.id, 'dave');
  await sdk.sendToUser('dave', 'notice', { text: 'hello dave' });
  await until(() => got.phone.length === 1 && got.laptop.length === 1, 'the notice on both of dave\'s connections');
  assert.deepEqual(got.phone, ['hello dave']);
  // A user channel is its user's alone: another connection's subscription is refused.
  const raw = new WebSocket(`ws://127.0.0.1:${server.port}/app/${APP.key}?protocol=7`);
  const events = [];
  raw.on('message', (text) => events.push(JSON.parse(text)));
  await until(() => events.length === 1, 'connection_established');
  raw.send(JSON.stringify({ event: 'pusher:subscribe', data: { channel: '#server-to-user-dave' } }));
  raw.send(JSON.stringify({ event: 'pusher:signin', data: { auth: `${APP.key}:${'0'.repeat(64)}`, user_data: '{"id":"dave"}' } }));
  await until(() => events.length === 3, 'two refusals');
  assert.equal(events[1].event, 'pusher:subscription_error');
  assert.equal(events[1].data.status, 403);
  assert.equal(events[2].event, 'pusher:error');
  assert.match(events[2].data.message, /invalid signature/);
  raw.close();
  const closes = [];
  for (const client of [phone, laptop]) client.connection.bind('error', (error) => closes.push(error.error?.data?.code));
  await sdk.terminateUserConnections('dave');
  await until(() => phone.connection.state === 'disconnected' && laptop.connection.state === 'disconnected', 'dave disconnected');
  assert.deepEqual(closes.filter(Boolean), [4009, 4009]);
  assert.equal(stranger.connection.state, 'connected', 'other users stay');
  assert.deepEqual(got.stranger, []);
  stranger.disconnect();
});

test('webhooks in Pusher\'s format, signed with the app\'s secret: occupied, vacated, members once per user, client events', { skip: skipWithoutHerald, timeout: 60000 }, async () => {
  const events = (name, channel) => hooks.flatMap((hook) => hook.events).filter((event) => event.name === name && event.channel === channel);
  const alice1 = pusherClient({ user: 'alice' });
  const alice2 = pusherClient({ user: 'alice' });
  const bob = pusherClient({ user: 'bob' });
  await subscribed(alice1.subscribe('presence-hooked'));
  await subscribed(alice2.subscribe('presence-hooked'));
  const bobRoom = bob.subscribe('presence-hooked');
  await subscribed(bobRoom);
  await until(() => events('channel_occupied', 'presence-hooked').length === 1, 'channel_occupied');
  await until(() => events('member_added', 'presence-hooked').length === 2, 'member_added for alice and bob');
  assert.deepEqual(events('member_added', 'presence-hooked').map((event) => event.user_id).sort(), ['alice', 'bob']);
  bobRoom.trigger('client-wave', { hi: 1 });
  await until(() => events('client_event', 'presence-hooked').length === 1, 'client_event');
  const wave = events('client_event', 'presence-hooked')[0];
  assert.equal(wave.event, 'client-wave');
  assert.deepEqual(JSON.parse(wave.data), { hi: 1 });
  assert.equal(wave.socket_id, bob.connection.socket_id);
  assert.equal(wave.user_id, 'bob');
  // Server events are not client events: no webhook for them.
  await sdk.trigger('presence-hooked', 'server-news', {});
  alice1.disconnect();
  await sleep(700);
  assert.equal(events('member_removed', 'presence-hooked').length, 0, 'alice is still there on another connection');
  alice2.disconnect();
  bob.disconnect();
  await until(() => events('member_removed', 'presence-hooked').length === 2, 'member_removed for both');
  await until(() => events('channel_vacated', 'presence-hooked').length === 1, 'channel_vacated');
  const mine = hooks.filter((hook) => hook.events.some((event) => event.channel === 'presence-hooked'));
  assert.ok(mine.every((hook) => hook.valid && !hook.validWithOtherSecret), 'every call signed with the app\'s secret');
  assert.ok(mine.every((hook) => Math.abs(hook.time - Date.now()) < 60000), 'time_ms is now');
  assert.equal(mine.flatMap((hook) => hook.events).filter((event) => event.name === 'client_event').length, 1);
  const cached = pusherClient();
  await subscribed(cached.subscribe('cache-hooked'));
  await until(() => events('cache_miss', 'cache-hooked').length === 1, 'cache_miss');
  cached.disconnect();
});
