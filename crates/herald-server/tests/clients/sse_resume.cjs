// Herald test client on the third-party npm `eventsource` package (what browsers' EventSource
// does, in Node): subscribes to two channels through a TCP proxy, cuts the proxy to force a
// disconnect, publishes while it is down, and checks the automatic reconnect resumes with
// Last-Event-ID: every publication exactly once, in order on each channel. Prints one JSON line; exit 0 if ok.
//
// usage: HERALD_TEST_NODE_MODULES=.../node_modules node sse_resume.cjs http://127.0.0.1:PORT
'use strict';
const net = require('node:net');
const { EventSource } = require(`${process.env.HERALD_TEST_NODE_MODULES}/eventsource`);

const target = new URL(process.argv[2]);
const connections = new Set();
const requestHeads = [];
const proxy = net.createServer((client) => {
  const upstream = net.connect(Number(target.port), target.hostname);
  const pair = { client, upstream };
  connections.add(pair);
  client.once('data', (head) => requestHeads.push(head.toString('latin1').toLowerCase()));
  client.pipe(upstream);
  upstream.pipe(client);
  const end = () => { client.destroy(); upstream.destroy(); connections.delete(pair); };
  for (const socket of [client, upstream]) { socket.on('error', end); socket.on('close', end); }
});

const publish = async (channel, n) => {
  const response = await fetch(`${target.origin}/api/publish`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ channel, data: { n } }),
  });
  if (!response.ok) throw new Error(`publish failed: ${response.status}`);
};

const fail = (why) => { console.log(JSON.stringify({ ok: false, why })); process.exit(1); };
setTimeout(() => fail('timed out'), 20000).unref();

proxy.listen(0, '127.0.0.1', () => {
  const url = `http://127.0.0.1:${proxy.address().port}/sse?channel=es:a&channel=es:b`;
  const source = new EventSource(url);
  const seen = [];
  let opens = 0;
  // The opening cursor, readable by the page (a named event: onmessage does not fire for it).
  const openingCursors = [];
  source.addEventListener('cursor', (event) => {
    const { type, cursor } = JSON.parse(event.data);
    if (type === 'open' && cursor === event.lastEventId) openingCursors.push(cursor);
  });
  source.onopen = async () => {
    opens += 1;
    if (opens === 1) {
      await publish('es:a', 1);
      await publish('es:b', 2);
    } else if (opens === 2) {
      await publish('es:b', 6);
    }
  };
  source.onmessage = async (event) => {
    const publication = JSON.parse(event.data);
    seen.push({ channel: publication.channel, n: publication.data.n, offset: publication.offset });
    if (seen.length === 2) {
      // A network drop: both directions cut, no goodbye. Publish while it is down.
      for (const { client, upstream } of connections) { client.destroy(); upstream.destroy(); }
      await publish('es:a', 3);
      await publish('es:b', 4);
      await publish('es:a', 5);
    }
    if (seen.length === 6) {
      source.close();
      proxy.close();
      const ns = seen.map((entry) => entry.n);
      const inOrder = (channel) => {
        const mine = seen.filter((entry) => entry.channel === channel).map((entry) => entry.n);
        return mine.every((n, i) => i === 0 || mine[i - 1] < n);
      };
      const everyOnce = JSON.stringify([...ns].sort((x, y) => x - y)) === JSON.stringify([1, 2, 3, 4, 5, 6]);
      const resumedWithId = requestHeads.length >= 2 && requestHeads[1].includes('last-event-id:');
      const cursorsRead = openingCursors.length === 2;
      const ok = everyOnce && inOrder('es:a') && inOrder('es:b') && opens === 2 && resumedWithId && cursorsRead;
      console.log(JSON.stringify({ ok, seen, opens, resumedWithId, openingCursors }));
      process.exit(ok ? 0 : 1);
    }
  };
});
