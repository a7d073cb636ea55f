// Stand-ins for a Herald server, for the unit tests: a WebSocket class and a fetch function
// that answer as Herald does (docs/protocol.md), and that a test scripts: refuse connections,
// push frames, close sockets. No network; real timers, with the SDK's delays set short.

/** A scripted Herald behind a fake `WebSocket` implementation. */
export class FakeWsServer {
  /** Whether a new socket opens (false: it closes 1006 before opening, as a blocked one does). */
  accept = true;
  /** Every socket made, oldest first. */
  sockets = [];
  /** Answers by op: `(command, socket) => result`, or throw `{code, message}` for an error reply. */
  ops = {
    connect: (command) => ({ client: command.client ?? `client-${this.sockets.length}` }),
    subscribe: (command) =>
      command.since ? { position: command.since, recovered: true } : { position: { epoch: 'e1', offset: 0 } },
    unsubscribe: () => ({}),
    ping: () => ({}),
    refresh: () => ({}),
    publish: (command) => ({ channel: command.channel, offset: 1, epoch: 'e1' }),
  };

  get WebSocket() {
    const server = this;
    return class FakeWebSocket {
      readyState = 0;
      /** The commands this socket was sent. */
      commands = [];
      constructor(url) {
        this.url = url;
        server.sockets.push(this);
        const accept = server.accept;
        setTimeout(() => (accept ? this.#open() : this.serverClose(1006, '')), 1);
      }
      #open() {
        if (this.readyState !== 0) return;
        this.readyState = 1;
        this.onopen?.({});
      }
      send(text) {
        if (this.readyState !== 1) throw new Error('not open');
        const command = JSON.parse(text);
        this.commands.push(command);
        const handler = server.ops[command.op];
        let reply;
        try {
          reply = { id: command.id, result: handler ? handler(command, this) : {} };
        } catch (error) {
          reply = { id: command.id, error: { code: error.code ?? 'internal', message: error.message ?? 'failed' } };
        }
        if ('result' in reply && reply.result === undefined) return; // the handler answers later, or never
        setTimeout(() => this.push(reply), 0);
      }
      /** A frame from the server. */
      push(message) {
        if (this.readyState === 1) this.onmessage?.({ data: JSON.stringify(message) });
      }
      /** The server ends the connection. */
      serverClose(code, reason = '') {
        if (this.readyState === 3) return;
        this.readyState = 3;
        this.onclose?.({ code, reason });
      }
      close() {
        this.readyState = 3;
      }
      ops(op) {
        return this.commands.filter((command) => command.op === op);
      }
    };
  }

  /** The newest socket. */
  get last() {
    return this.sockets[this.sockets.length - 1];
  }
}

/** A scripted `/poll` endpoint behind a fake `fetch`. */
export class FakePollServer {
  /** Every request's URL, oldest first. */
  requests = [];
  /** `(url) => {status, body}`; the default answers 200 with nothing new. */
  answer = () => ({ status: 200, body: { messages: [], cursor: 'c1' } });

  get fetch() {
    return async (href, init = {}) => {
      const url = new URL(href);
      this.requests.push(url);
      await new Promise((resolve) => setTimeout(resolve, 1)); // an answer takes a turn, as a real one does
      const { status, body } = await this.answer(url, init);
      return {
        status,
        ok: status >= 200 && status < 300,
        headers: new Headers(),
        json: async () => body,
      };
    };
  }
}

/** Polls `predicate` until it is true, or fails after `ms` with `what`. */
export async function until(predicate, what, ms = 3000) {
  const end = Date.now() + ms;
  while (!predicate()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 2));
  }
}

/** Options that make the SDK's pauses short, for tests. */
export const quick = {
  minReconnectDelay: 5,
  maxReconnectDelay: 20,
  connectTimeout: 500,
  requestTimeout: 500,
  pingInterval: 60000,
  upgradeInterval: 60000,
  pollTimeout: 0,
};

/** A JWT with these claims (unsigned: the SDK reads claims, the server checks signatures). */
export function jwt(claims) {
  const part = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');
  return `${part({ alg: 'HS256', typ: 'JWT' })}.${part(claims)}.signature`;
}
