// The API as a TypeScript app uses it, type-checked by `npm run check` against herald.d.ts;
// never run. A rename in herald.d.ts breaks this file, and test/unit/api.test.js holds the
// declared names against what herald.js exports.
import { Herald, HeraldError, type Position, type Publication, type StateEvent } from '../../herald.js';

const herald = new Herald('http://127.0.0.1:8080', {
  transports: ['websocket', 'sse', 'poll'],
  getToken: async () => 'token',
  maxReconnectDelay: 10_000,
});
herald.on('state', ({ state, transport }: StateEvent) => {
  const label: string = `${state} ${transport ?? ''}`;
  void label;
});
herald.on('error', (error) => {
  const code: string = error.code;
  void code;
});

const since: Position = { epoch: 'e', offset: 3 };
const chat = herald.subscribe('chat:lobby', { since });
chat.on('publication', (publication: Publication) => {
  const offset: number = publication.offset;
  void offset;
});
chat.on('subscribed', ({ recovered, position }) => {
  if (recovered === false && position) void position.epoch;
});
chat.on('join', (entry) => void entry.client);
chat.on('error', (error: HeraldError) => void error.status);

async function use(): Promise<void> {
  const sent = await herald.publish('chat:lobby', { text: 'hi' }, { idempotencyKey: 'k1' });
  const page = await chat.history({ limit: 10, reverse: true });
  const last: Publication | undefined = page.publications[0];
  const who = await chat.presence();
  void [sent.offset, last?.data, page.oldest, who.clients.length, who.users[0]?.clients];
  chat.unsubscribe();
  herald.close();
}
void use;

// @ts-expect-error: not a transport
new Herald('http://x', { transports: ['carrier-pigeon'] });
// @ts-expect-error: no such event
chat.on('message', () => {});
