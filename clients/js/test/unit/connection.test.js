// The connection's life against scripted servers (fakes.js): exactly-once delivery across
// duplicates and gaps, fallback and upgrade between transports, reconnect rules, tokens.
import test from 'node:test';
import assert from 'node:assert/strict';
import { Herald } from '../../herald.js';
import { FakePollServer, FakeWsServer, jwt, quick, until } from './fakes.js';

const URL_ = 'http://127.0.0.1:9';

// Every client a test makes is closed after it, passed or failed, so no timer outlives it.
const made = [];
test.afterEach(() => {
  for (const herald of made.splice(0)) herald.close();
});
function client(options) {
  const herald = new Herald(URL_, { ...quick, ...options });
  made.push(herald);
  return herald;
}

function publication(offset, epoch = 'e1', channel = 'news') {
  return { channel, offset, epoch, data: { n: offset }, time: 0 };
}

/** A client on a fake WebSocket, subscribed to `news`, and what it delivered. */
async function subscribed(server, options = {}) {
  const herald = client({ transports: ['websocket'], WebSocket: server.WebSocket, ...options });
  const subscription = herald.subscribe('news');
  const delivered = [];
  subscription.on('publication', (p) => delivered.push(`${p.epoch}:${p.offset}`));
  await until(() => subscription.position !== null, 'the subscribe reply');
  return { herald, subscription, delivered };
}

test('duplicates are dropped and a gap resubscribes from the position held', async () => {
  const server = new FakeWsServer();
  const { herald, subscription, delivered } = await subscribed(server);
  const socket = server.last;
  for (const offset of [1, 2, 2, 1, 3]) socket.push(publication(offset));
  await until(() => delivered.length === 3, 'three publications');
  assert.deepEqual(delivered, ['e1:1', 'e1:2', 'e1:3']);

  socket.push(publication(5)); // 4 went missing
  await until(() => socket.ops('subscribe').length === 2, 'a second subscribe');
  assert.deepEqual(socket.ops('unsubscribe').map((c) => c.channel), ['news']);
  assert.deepEqual(socket.ops('subscribe')[1].since, { epoch: 'e1', offset: 3 });
  assert.deepEqual(delivered, ['e1:1', 'e1:2', 'e1:3'], 'the publication after a gap is not delivered');
  // The server recovers what was missed; the one pushed before the gap closed comes again.
  socket.push(publication(4));
  socket.push(publication(5));
  await until(() => delivered.length === 5, 'the recovered publications');
  assert.deepEqual(delivered.slice(3), ['e1:4', 'e1:5']);
  assert.deepEqual(subscription.position, { epoch: 'e1', offset: 5 });
  herald.close();
});

test('a new epoch is a gap: the subscription resubscribes and starts where the server says', async () => {
  const server = new FakeWsServer();
  const { herald, subscription, delivered } = await subscribed(server);
  const socket = server.last;
  socket.push(publication(1));
  await until(() => delivered.length === 1, 'one publication');
  const notices = [];
  subscription.on('subscribed', (event) => notices.push(event));
  server.ops.subscribe = () => ({ position: { epoch: 'e2', offset: 7 }, recovered: false });
  socket.push(publication(8, 'e2'));
  await until(() => notices.length === 1, 'the resubscribe');
  assert.equal(notices[0].recovered, false);
  assert.deepEqual(subscription.position, { epoch: 'e2', offset: 7 });
  socket.push(publication(8, 'e2'));
  await until(() => delivered.length === 2, 'the next publication');
  assert.deepEqual(delivered, ['e1:1', 'e2:8']);
  herald.close();
});

test('a lost connection reconnects on the same transport and resubscribes from its position', async () => {
  const server = new FakeWsServer();
  const { herald, delivered } = await subscribed(server);
  const first = server.last;
  first.push(publication(1));
  first.push(publication(2));
  await until(() => delivered.length === 2, 'two publications');
  const states = [];
  herald.on('state', ({ state, transport }) => states.push(`${state}/${transport}`));
  first.serverClose(1006);
  await until(() => server.sockets.length === 2 && server.last.ops('subscribe').length === 1, 'a resubscribe');
  assert.equal(first.ops('connect')[0].client, undefined);
  assert.equal(server.last.ops('connect')[0].client, 'client-1', 'the client id is taken back');
  assert.deepEqual(server.last.ops('subscribe')[0].since, { epoch: 'e1', offset: 2 });
  await until(() => herald.state === 'connected', 'connected again');
  assert.deepEqual(states, ['connecting/websocket', 'connected/websocket']);
  herald.close();
});

test('a WebSocket that never opens falls back to long-polling at once, and upgrades when it works again', async () => {
  const ws = new FakeWsServer();
  ws.accept = false;
  const poll = new FakePollServer();
  poll.answer = (url) => {
    const n = poll.requests.length;
    return { status: 200, body: { messages: n === 1 ? [] : [publication(n - 1)], cursor: `c${n}` } };
  };
  const herald = client({
    transports: ['websocket', 'sse', 'poll'],
    WebSocket: ws.WebSocket,
    EventSource: undefined,
    fetch: async (href, init) => {
      if (new URL(href).pathname === '/sse') throw new TypeError('blocked'); // SSE fails too
      return poll.fetch(href, init);
    },
    upgradeInterval: 50,
  });
  const states = [];
  herald.on('state', ({ state, transport }) => states.push(`${state}/${transport}`));
  const delivered = [];
  const subscription = herald.subscribe('news');
  subscription.on('publication', (p) => delivered.push(p.offset));
  await until(() => delivered.length >= 3, 'publications by long-poll');
  assert.deepEqual(states.slice(0, 4), ['connecting/websocket', 'connecting/sse', 'connecting/poll', 'connected/poll']);
  assert.equal(poll.requests[0].searchParams.get('timeout'), '0', 'the first poll opens the session at once');
  assert.equal(poll.requests[1].searchParams.get('since'), 'c1', 'the next poll resumes from the cursor');

  ws.accept = true;
  await until(() => herald.transport === 'websocket' && herald.state === 'connected', 'the upgrade');
  const resubscribe = ws.last.ops('subscribe')[0];
  assert.equal(resubscribe.since.offset, subscription.position.offset, 'the WebSocket resumes from the last delivered');
  const polls = poll.requests.length;
  await new Promise((resolve) => setTimeout(resolve, 30));
  assert.equal(poll.requests.length, polls, 'long-polling stopped');
  assert.deepEqual(delivered, [...delivered].sort((a, b) => a - b), 'in order');
  herald.close();
});

test('when every transport fails the client backs off and keeps trying, all in order', async () => {
  const ws = new FakeWsServer();
  ws.accept = false;
  const poll = new FakePollServer();
  poll.answer = () => ({ status: 503, body: { error: { code: 'engine_unavailable', message: 'down' } } });
  const herald = client({ transports: ['websocket', 'poll'], WebSocket: ws.WebSocket, fetch: poll.fetch });
  const errors = [];
  herald.on('error', (error) => errors.push(error.code));
  herald.subscribe('news');
  await until(() => ws.sockets.length >= 3 && poll.requests.length >= 3, 'three rounds');
  herald.close();
  assert.ok(errors.includes('connection_closed') && errors.includes('engine_unavailable'), errors.join());
  assert.equal(herald.state, 'disconnected');
  const tries = ws.sockets.length + poll.requests.length;
  await new Promise((resolve) => setTimeout(resolve, 60));
  assert.equal(ws.sockets.length + poll.requests.length, tries, 'close() stops the retries');
});

test('a transport with no implementation here is reported once, and the next one is used', async () => {
  const poll = new FakePollServer();
  poll.answer = () => ({ status: 503, body: { error: { code: 'engine_unavailable', message: 'down' } } });
  const herald = client({ transports: ['websocket', 'poll'], WebSocket: 'not an implementation', fetch: poll.fetch });
  const errors = [];
  herald.on('error', (error) => errors.push(error.code));
  herald.subscribe('news');
  await until(() => errors.filter((code) => code === 'engine_unavailable').length >= 3, 'three rounds');
  assert.equal(errors.filter((code) => code === 'transport_unavailable').length, 1, errors.join());
});

test('an expired token is renewed with getToken and the same transport reconnects', async () => {
  const server = new FakeWsServer();
  let issued = 0;
  const getToken = async () => jwt({ sub: 'ann', n: ++issued });
  const { herald } = await subscribed(server, { getToken });
  assert.equal(issued, 1);
  server.last.serverClose(4003, 'token expired');
  await until(() => server.sockets.length === 2 && herald.state === 'connected', 'the reconnect');
  assert.equal(issued, 2, 'a new token');
  assert.equal(JSON.parse(Buffer.from(server.last.ops('connect')[0].token.split('.')[1], 'base64url')).n, 2);
  herald.close();
});

test('a token about to expire is refreshed in place on a WebSocket', async () => {
  const server = new FakeWsServer();
  let issued = 0;
  // Valid 3.05 s: renewalDelay gives 50 ms.
  const getToken = async () => jwt({ sub: 'ann', n: ++issued, exp: (Date.now() + 3050) / 1000 });
  const { herald } = await subscribed(server, { getToken });
  await until(() => server.last.ops('refresh').length === 1, 'a refresh', 2000);
  assert.equal(server.sockets.length, 1, 'the same connection');
  assert.equal(issued, 2);
  herald.close();
});

test('without getToken a refused token stops the client; so does a disconnect that says not to reconnect', async () => {
  const refusing = new FakeWsServer();
  refusing.ops.connect = () => {
    throw { code: 'invalid_token', message: 'bad signature' };
  };
  const herald = client({ transports: ['websocket'], WebSocket: refusing.WebSocket, token: 'x' });
  const errors = [];
  herald.on('error', (error) => errors.push(error.code));
  herald.subscribe('news');
  await until(() => errors.length === 1, 'the refusal');
  await until(() => herald.state === 'disconnected', 'disconnected');
  await new Promise((resolve) => setTimeout(resolve, 40));
  assert.equal(refusing.sockets.length, 1, 'no retry with the same bad token');
  herald.close();

  const server = new FakeWsServer();
  const { herald: second } = await subscribed(server);
  const notices = [];
  second.on('disconnect', (notice) => notices.push(notice));
  server.last.push({ disconnect: { code: 4009, reason: 'kicked', reconnect: false } });
  server.last.serverClose(4009, 'kicked');
  await until(() => second.state === 'disconnected', 'disconnected');
  assert.deepEqual(notices, [{ code: 4009, reason: 'kicked', reconnect: false }]);
  await new Promise((resolve) => setTimeout(resolve, 40));
  assert.equal(server.sockets.length, 1);
  second.close();
});

test('a refused channel ends that subscription only', async () => {
  const server = new FakeWsServer();
  const defaultSubscribe = server.ops.subscribe;
  server.ops.subscribe = (command) => {
    if (command.channel === 'secret') throw { code: 'permission_denied', message: 'no' };
    return defaultSubscribe(command);
  };
  const { herald, subscription, delivered } = await subscribed(server);
  const secret = herald.subscribe('secret');
  const events = [];
  secret.on('error', (error) => events.push(`error:${error.code}`));
  secret.on('unsubscribed', () => events.push('unsubscribed'));
  await until(() => events.length === 2, 'the refusal');
  assert.deepEqual(events, ['error:permission_denied', 'unsubscribed']);
  assert.equal(secret.active, false);
  assert.equal(herald.getSubscription('secret'), null);
  server.last.push(publication(1));
  await until(() => delivered.length === 1, 'news goes on');
  assert.equal(subscription.active, true);
  herald.close();
});

test('long-polling sends each channel position and reports an unrecovered gap', async () => {
  const poll = new FakePollServer();
  poll.answer = (url) => {
    if (poll.requests.length === 1) return { status: 200, body: { messages: [], cursor: 'c1', recovery: [{ channel: 'old', position: { epoch: 'e9', offset: 40 } }] } };
    return { status: 200, body: { messages: [], cursor: 'c2' } };
  };
  const herald = client({ transports: ['poll'], fetch: poll.fetch });
  const old = herald.subscribe('old', { since: { epoch: 'e1', offset: 3 } });
  const fresh = herald.subscribe('fresh');
  const notices = [];
  old.on('subscribed', (event) => notices.push(event));
  await until(() => poll.requests.length >= 2, 'two polls');
  const first = poll.requests[0];
  assert.deepEqual(first.searchParams.getAll('channel'), ['old', 'fresh'], 'one request for every subscription');
  assert.deepEqual(JSON.parse(first.searchParams.get('positions')), { old: { epoch: 'e1', offset: 3 } });
  assert.equal(notices[0].recovered, false);
  assert.deepEqual(old.position, { epoch: 'e9', offset: 40 });
  assert.deepEqual(JSON.parse(poll.requests[1].searchParams.get('positions')), { old: { epoch: 'e9', offset: 40 } });
  assert.equal(fresh.position, null);
  herald.close();
});
