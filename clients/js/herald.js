// herald-client: the JavaScript SDK of Herald, for browsers and Node 20, with no dependencies.
// Herald serves this very file at GET /client.js:  import { Herald } from '/client.js'
//
// One Herald object is one logical connection to a Herald server. It keeps every subscription's
// position (the last publication handed to the app) and resumes from it after any loss, on any
// transport, so the app sees each publication once, in order. When a WebSocket cannot be opened
// it falls back to SSE, then to long-polling (one request for all subscriptions), and tries
// WebSocket again later. Wire contract: docs/protocol.md; guide: docs/clients.md.

/** @typedef {{ epoch: string, offset: number }} Position */
/** @typedef {{ channel: string, offset: number, epoch: string, data: any, time: number, info?: any }} Publication */
/** @typedef {'websocket' | 'sse' | 'poll'} TransportName */
/** @typedef {'disconnected' | 'connecting' | 'connected'} ConnectionState */

const DEFAULTS = {
  transports: /** @type {TransportName[]} */ (['websocket', 'sse', 'poll']),
  minReconnectDelay: 500,
  maxReconnectDelay: 20000,
  /** An attempt that has not opened by then has failed. */
  connectTimeout: 10000,
  /** A WebSocket request unanswered by then fails (and a ping unanswered ends the connection). */
  requestTimeout: 10000,
  /** A WebSocket silent this long is pinged. */
  pingInterval: 20000,
  /** How long a long-poll waits on the server. */
  pollTimeout: 25,
  /** After falling back from WebSocket, how often to see whether it works again. */
  upgradeInterval: 30000,
};

/** An error from Herald or from the SDK: `code` is the server's snake_case code where there is one. */
export class HeraldError extends Error {
  /**
   * @param {string} code
   * @param {string} message
   * @param {number} [status] the HTTP status or WebSocket close code, when there was one
   */
  constructor(code, message, status) {
    super(message);
    this.name = 'HeraldError';
    this.code = code;
    this.status = status;
  }
}

/** Listeners by event name; a throwing listener is reported, and does not stop the others. */
class Emitter {
  #listeners = new Map();

  /** @param {string} event @param {(value: any) => void} listener */
  on(event, listener) {
    if (!this.#listeners.has(event)) this.#listeners.set(event, new Set());
    this.#listeners.get(event).add(listener);
    return this;
  }

  /** @param {string} event @param {(value: any) => void} listener */
  off(event, listener) {
    this.#listeners.get(event)?.delete(listener);
    return this;
  }

  /** @param {string} event @param {any} value */
  emit(event, value) {
    for (const listener of [...(this.#listeners.get(event) ?? [])]) {
      try {
        listener(value);
      } catch (error) {
        setTimeout(() => {
          throw error;
        });
      }
    }
  }
}

/**
 * Exponential backoff with full jitter: a random delay between zero and min·2^attempt (at most
 * max), so clients cut off together do not come back together.
 */
export class Backoff {
  /** @param {number} min @param {number} max @param {() => number} [random] */
  constructor(min, max, random = Math.random) {
    this.min = min;
    this.max = Math.max(min, max);
    this.attempt = 0;
    this.random = random;
  }

  next() {
    const bound = Math.min(this.max, this.min * 2 ** Math.min(this.attempt, 30));
    this.attempt += 1;
    return Math.floor(bound * this.random());
  }

  reset() {
    this.attempt = 0;
  }
}

/** The `exp` claim (Unix seconds) of a JWT, read without verifying it; null when absent. */
export function tokenExpiry(token) {
  const claims = tokenClaims(token);
  return typeof claims?.exp === 'number' ? claims.exp : null;
}

/** The last token's `subs`: asked for once per subscription on every (re)connect. */
let lastSubs = { token: null, subs: [] };

/** The channels a token subscribes its connections to on the server (its `subs` claim). */
export function tokenSubs(token) {
  if (token !== lastSubs.token) {
    const subs = tokenClaims(token)?.subs;
    lastSubs = { token, subs: Array.isArray(subs) ? subs.filter((channel) => typeof channel === 'string') : [] };
  }
  return lastSubs.subs;
}

/** A JWT's claims, read (not verified: the server does that); null when it is not one. */
function tokenClaims(token) {
  if (!token) return null;
  try {
    const part = String(token).split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    return JSON.parse(atob(part + '='.repeat((4 - (part.length % 4)) % 4)));
  } catch {
    return null;
  }
}

/**
 * How long to wait before renewing a token valid for `remaining` ms more: most of its life,
 * and never later than 3 s before it ends.
 */
export function renewalDelay(remaining) {
  return Math.max(0, Math.min(remaining * 0.85, remaining - 3000));
}

/**
 * One channel's subscription. Created by `herald.subscribe`; it lives until `unsubscribe()`,
 * across every reconnect and transport change.
 */
export class Subscription extends Emitter {
  #herald;
  /** @type {Position | null} */
  #position;
  #active = true;

  /** @param {any} herald @param {string} channel @param {Position | null} since */
  constructor(herald, channel, since) {
    super();
    this.#herald = herald;
    this.channel = channel;
    this.#position = since ? { epoch: String(since.epoch), offset: Number(since.offset) } : null;
  }

  /** The position of the last publication delivered (or where the subscription started). */
  get position() {
    return this.#position && { ...this.#position };
  }

  /** Whether `unsubscribe()` has not been called (nor the server refused the channel). */
  get active() {
    return this.#active;
  }

  /** @param {{ limit?: number, since?: Position, reverse?: boolean }} [options] */
  history(options = {}) {
    return this.#herald.history(this.channel, options);
  }

  presence() {
    return this.#herald.presence(this.channel);
  }

  unsubscribe() {
    if (!this.#active) return;
    this.#active = false;
    this.#herald._forget(this);
    this.emit('unsubscribed', { channel: this.channel });
  }

  // What the connection tells the subscription. Underscored: for the SDK itself.

  /** The server (re)subscribed the channel: where it now stands, and whether the gap was recovered. */
  _subscribed({ position, recovered }, transport) {
    // Recovered: missed publications follow, after the position already held. Otherwise the
    // subscription starts over at the channel's position now.
    if (recovered !== true && position) this.#position = { epoch: position.epoch, offset: position.offset };
    this.emit('subscribed', { channel: this.channel, position: this.position, recovered, transport });
  }

  /**
   * A publication from the server: delivered when it is the next one; a duplicate (already
   * delivered, say by the transport before) is dropped; a gap is reported as 'gap' so the
   * connection resubscribes from the position held.
   * @returns {'delivered' | 'duplicate' | 'gap'}
   */
  _publication(publication) {
    const held = this.#position;
    if (held && publication.epoch === held.epoch) {
      if (publication.offset <= held.offset) return 'duplicate';
      if (publication.offset > held.offset + 1) return 'gap';
    } else if (held && publication.epoch !== held.epoch) {
      return 'gap';
    }
    this.#position = { epoch: publication.epoch, offset: publication.offset };
    this.emit('publication', publication);
    return 'delivered';
  }

  /** The server ended the subscription (its API's `unsubscribe`): it is not brought back. */
  _unsubscribed(reason) {
    this.#active = false;
    this.emit('unsubscribed', { channel: this.channel, reason });
  }

  /** The server refused the channel for good: the subscription ends. */
  _refused(error) {
    this.#active = false;
    this.emit('error', error);
    this.emit('unsubscribed', { channel: this.channel, error });
  }
}

/** The `http(s)://` base and the `ws(s)://` URL of `/ws`, from what the app gave. */
function endpoints(url) {
  const base = globalThis.location?.href;
  const parsed = new URL(url, base);
  if (parsed.protocol === 'ws:') parsed.protocol = 'http:';
  if (parsed.protocol === 'wss:') parsed.protocol = 'https:';
  if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') {
    throw new HeraldError('invalid_url', `a Herald URL is http(s):// or ws(s)://, not ${parsed.protocol}`);
  }
  let path = parsed.pathname.replace(/\/+$/, '');
  if (path.endsWith('/ws')) path = path.slice(0, -3);
  const http = `${parsed.protocol}//${parsed.host}${path}`;
  return { http, ws: `${parsed.protocol === 'https:' ? 'wss' : 'ws'}://${parsed.host}${path}/ws` };
}

/** The error of a non-2xx HTTP answer, from its `{"error":{code,message}}` body where it has one. */
async function answerError(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not JSON: described by its status below
  }
  const error = body?.error;
  return new HeraldError(error?.code ?? 'http_error', error?.message ?? `HTTP ${response.status}`, response.status);
}

/**
 * What an error answer means for the connection: a token to renew now (`tokenExpired`), a
 * token refused (`badToken`: a new one from getToken, after a pause), or trouble to retry.
 * @param {HeraldError} error
 */
export function outcomeOf(error) {
  if (error.code === 'token_expired') return { error, tokenExpired: true };
  if (error.code === 'invalid_token' || error.code === 'unauthorized' || error.status === 401) {
    return { error, badToken: true };
  }
  return { error };
}

/** The session slot while an attempt at `name` waits (for its turn, or for getToken). */
function waiting(name) {
  return { name, stop() {} };
}

function textOf(data) {
  return typeof data === 'string' ? data : new TextDecoder().decode(data);
}

/**
 * A connection to Herald over the best transport that works.
 *
 * Events: `state` ({state, transport}), `error` (HeraldError), `disconnect` (the server's
 * notice, {code, reason, reconnect}), `subscription` (a Subscription the server made: the
 * token's `subs`, or the server API's `subscribe`).
 */
export class Herald extends Emitter {
  #options;
  #endpoints;
  /** @type {Map<string, Subscription>} */
  #subscriptions = new Map();
  /** @type {ConnectionState} */
  #state = 'disconnected';
  /** @type {any} */
  #session = null;
  #closed = false;
  #transportIndex = 0;
  /** Where the current round of attempts began: when every transport failed once, back off. */
  #roundStart = 0;
  #backoff;
  #retryTimer = null;
  #upgradeTimer = null;
  #renewTimer = null;
  #token = null;
  #tokenFailures;
  /** The server's id for this client, taken back on reconnect so presence does not flap. */
  #client = null;
  /** The last cursor an HTTP transport gave: it resumes channels whose position is unknown. */
  #cursor = null;
  #unlisten = [];
  /** Transports with no implementation here, already reported. */
  #unavailable = new Set();

  /**
   * @param {string} url the server, `http://host:port` (or a `ws://` URL of it)
   * @param {object} [options] see herald.d.ts
   */
  constructor(url, options = {}) {
    super();
    // An option given as undefined is an option not given.
    const given = Object.fromEntries(Object.entries(options).filter(([, value]) => value !== undefined));
    this.#options = /** @type {any} */ ({ ...DEFAULTS, ...given });
    this.#endpoints = endpoints(url);
    const known = ['websocket', 'sse', 'poll'];
    const transports = this.#options.transports;
    if (!Array.isArray(transports) || transports.length === 0 || transports.some((name) => !known.includes(name))) {
      throw new HeraldError('invalid_option', `transports must be a non-empty list of ${known.join(', ')}`);
    }
    this.#backoff = new Backoff(this.#options.minReconnectDelay, this.#options.maxReconnectDelay);
    this.#tokenFailures = new Backoff(this.#options.minReconnectDelay, this.#options.maxReconnectDelay);
    this.#token = this.#options.token ?? null;
  }

  /** @returns {ConnectionState} */
  get state() {
    return this.#state;
  }

  /** @returns {TransportName | null} the transport in use or being tried */
  get transport() {
    return this.#session?.name ?? null;
  }

  /** The subscriptions, by channel. */
  get subscriptions() {
    return new Map(this.#subscriptions);
  }

  /** Starts connecting, if not already (subscribe does it too). */
  connect() {
    if (this.#closed) throw new HeraldError('closed', 'this Herald client was closed');
    if (this.#state !== 'disconnected') return this;
    this.#listenToTheBrowser();
    this.#roundStart = this.#transportIndex = 0;
    this.#attempt();
    return this;
  }

  /**
   * Subscribes to `channel` (once: a second call returns the same subscription).
   * @param {string} channel
   * @param {{ since?: Position }} [options]
   */
  subscribe(channel, options = {}) {
    const existing = this.#subscriptions.get(channel);
    if (existing) return existing;
    const subscription = new Subscription(this, channel, options.since ?? null);
    this.#subscriptions.set(channel, subscription);
    this.connect();
    this.#session?.add?.(subscription);
    return subscription;
  }

  /** @param {string} channel */
  getSubscription(channel) {
    return this.#subscriptions.get(channel) ?? null;
  }

  /**
   * Publishes `data` to `channel`: over the WebSocket when it is open, else `POST /api/publish`
   * with the client's token. Resolves to `{channel, offset, epoch}`.
   * @param {string} channel @param {any} data @param {{ idempotencyKey?: string }} [options]
   */
  async publish(channel, data, options = {}) {
    const fields = { channel, data, ...(options.idempotencyKey ? { idempotency_key: options.idempotencyKey } : {}) };
    if (this.#session?.name === 'websocket' && this.#state === 'connected') {
      return this.#session.request('publish', fields);
    }
    return this.#api('POST', '/api/publish', fields);
  }

  /**
   * A page of `channel`'s history: `{channel, publications, position, oldest}`.
   * @param {string} channel @param {{ limit?: number, since?: Position, reverse?: boolean }} [options]
   */
  async history(channel, options = {}) {
    if (this.#session?.name === 'websocket' && this.#state === 'connected') {
      const fields = { channel };
      if (options.since) fields.since = { epoch: options.since.epoch, offset: options.since.offset };
      if (options.limit != null) fields.limit = options.limit;
      if (options.reverse != null) fields.reverse = options.reverse;
      return this.#session.request('history', fields);
    }
    const query = new URLSearchParams();
    if (options.since) {
      query.set('since', String(options.since.offset));
      query.set('epoch', options.since.epoch);
    }
    if (options.limit != null) query.set('limit', String(options.limit));
    if (options.reverse != null) query.set('reverse', String(options.reverse));
    return this.#api('GET', `/api/channels/${encodeURIComponent(channel)}/history?${query}`);
  }

  /** Who is in `channel` now: `{clients, users}` (lists). @param {string} channel */
  async presence(channel) {
    if (this.#session?.name === 'websocket' && this.#state === 'connected') {
      return this.#session.request('presence', { channel });
    }
    return this.#api('GET', `/api/channels/${encodeURIComponent(channel)}/presence`);
  }

  /** Uses `token` from now on (the next connection, or a refresh of this one). @param {string} token */
  setToken(token) {
    this.#token = token;
    if (this.#state === 'connected') this.#session?.renew(token);
  }

  /** Ends the connection and every subscription; the object cannot be used again. */
  close() {
    if (this.#closed) return;
    this.#closed = true;
    this.#stop();
    for (const subscription of [...this.#subscriptions.values()]) subscription.unsubscribe();
    for (const unlisten of this.#unlisten) unlisten();
    this.#unlisten = [];
  }

  // ---- the connection's life ----

  #setState(state) {
    const transport = state === 'disconnected' ? null : this.transport;
    if (state === this.#state && transport === this.#lastTransport) return;
    this.#state = state;
    this.#lastTransport = transport;
    this.emit('state', { state, transport });
  }
  #lastTransport = null;

  /** Stops everything: the session and every timer (subscriptions stay). */
  #stop() {
    clearTimeout(this.#retryTimer);
    clearTimeout(this.#upgradeTimer);
    clearTimeout(this.#renewTimer);
    this.#retryTimer = this.#upgradeTimer = this.#renewTimer = null;
    const session = this.#session;
    this.#session = null;
    session?.stop();
    this.#setState('disconnected');
  }

  /** Tries the current transport (getting a token first when it needs one). */
  async #attempt() {
    this.#retryTimer = null;
    if (this.#closed) return;
    const name = this.#options.transports[this.#transportIndex];
    const Session = { websocket: WebSocketSession, sse: SseSession, poll: PollSession }[name];
    const attempt = waiting(name); // so a stop() during getToken is noticed
    this.#session = attempt;
    this.#setState('connecting');
    let token;
    try {
      token = await this.#currentToken();
    } catch (error) {
      if (this.#session !== attempt) return;
      this.#session = waiting(name);
      this.emit('error', new HeraldError('token_unavailable', `getToken failed: ${error?.message ?? error}`));
      this.#retryTimer = setTimeout(() => this.#attempt(), this.#tokenFailures.next());
      return;
    }
    if (this.#session !== attempt || this.#closed) return;
    this.#tokenFailures.reset();
    for (const channel of tokenSubs(token)) this.#serverSubscription(channel);
    const session = new Session(this.#host(), token);
    this.#session = session;
    if (!session.available()) {
      // Said once: it will not change (Node without `ws`, say); the next transport is tried.
      const error = this.#unavailable.has(name)
        ? undefined
        : new HeraldError('transport_unavailable', `no ${name} implementation here`);
      this.#unavailable.add(name);
      this.#failed(session, { error });
      return;
    }
    session.start();
  }

  /** The token to connect with: the one held while it is not about to expire, else a new one. */
  async #currentToken(renew = false) {
    const getToken = this.#options.getToken;
    if (!getToken) return this.#token;
    const expiry = this.#token && tokenExpiry(this.#token);
    const fresh = this.#token && (expiry == null || expiry * 1000 - Date.now() > 5000);
    if (!renew && fresh) return this.#token;
    this.#token = await getToken();
    return this.#token;
  }

  /** What a session may tell its Herald; events of a session no longer current are ignored. */
  #host() {
    const current = (session) => session === this.#session && !this.#closed;
    return {
      endpoints: this.#endpoints,
      options: this.#options,
      subscriptions: () => [...this.#subscriptions.values()],
      // Channels of the token's `subs`: the server subscribes them, from the positions given.
      managed: (channel) => tokenSubs(this.#token).includes(channel),
      client: () => this.#client,
      cursor: () => this.#cursor,
      opened: (session, client) => current(session) && this.#opened(session, client),
      failed: (session, outcome) => current(session) && this.#failed(session, outcome),
      subscribed: (session, channel, result) => {
        if (current(session)) this.#subscriptions.get(channel)?._subscribed(result, session.name);
      },
      serverSubscribed: (session, channel, result) => {
        if (current(session)) this.#serverSubscription(channel)._subscribed(result, session.name);
      },
      refused: (session, channel, error) => {
        if (!current(session)) return;
        const subscription = this.#subscriptions.get(channel);
        if (subscription) {
          this.#subscriptions.delete(channel);
          subscription._refused(error);
        }
      },
      unsubscribed: (session, channel, reason) => {
        if (!current(session)) return;
        const subscription = this.#subscriptions.get(channel);
        if (subscription) {
          this.#subscriptions.delete(channel);
          subscription._unsubscribed(reason);
        }
      },
      publication: (session, publication) => {
        if (!current(session)) return;
        const outcome = this.#subscriptions.get(publication.channel)?._publication(publication);
        if (outcome === 'gap') session.resync(this.#subscriptions.get(publication.channel));
      },
      presence: (session, channel, change, entry) => {
        if (current(session)) this.#subscriptions.get(channel)?.emit(change, entry);
      },
      cursorSeen: (session, cursor) => {
        if (current(session)) this.#cursor = cursor;
      },
      error: (session, error) => current(session) && this.emit('error', error),
    };
  }

  /** The subscription the server made to `channel`, created (and announced) if new. */
  #serverSubscription(channel) {
    let subscription = this.#subscriptions.get(channel);
    if (!subscription) {
      subscription = new Subscription(this, channel, null);
      this.#subscriptions.set(channel, subscription);
      this.emit('subscription', subscription);
    }
    return subscription;
  }

  #opened(session, client) {
    if (client) this.#client = client;
    this.#backoff.reset();
    this.#roundStart = this.#transportIndex;
    this.#setState('connected');
    this.#scheduleRenewal();
    if (this.#transportIndex > 0 && this.#options.transports[0] === 'websocket') this.#scheduleUpgrade();
  }

  /**
   * A session ended or never opened. `outcome`: `{opened, error, disconnect, tokenExpired, fatal}`.
   */
  #failed(session, outcome) {
    this.#session = null;
    clearTimeout(this.#renewTimer);
    clearTimeout(this.#upgradeTimer);
    if (outcome.error) this.emit('error', outcome.error);
    if (outcome.disconnect) this.emit('disconnect', outcome.disconnect);
    const tokenTrouble = outcome.tokenExpired || outcome.badToken;
    const stop = outcome.fatal || (outcome.disconnect && outcome.disconnect.reconnect === false);
    if (stop || (tokenTrouble && !this.#options.getToken)) {
      // Nothing to gain by trying again: the app decides (setToken, then connect()).
      this.#setState('disconnected');
      return;
    }
    if (tokenTrouble) this.#token = null; // getToken gives the next one
    const transports = this.#options.transports;
    let delay = 0;
    if (tokenTrouble) {
      // Not the transport's fault: the same one again, at once for an expiry.
      if (outcome.badToken) delay = this.#backoff.next();
    } else if (outcome.opened) {
      // It worked, then broke: try the same transport again, after a pause.
      this.#roundStart = this.#transportIndex;
      if (!outcome.tokenExpired) delay = this.#backoff.next();
    } else {
      // It never opened: the next transport now; once every one has failed, pause.
      this.#transportIndex = (this.#transportIndex + 1) % transports.length;
      if (this.#transportIndex === this.#roundStart) delay = this.#backoff.next();
    }
    this.#session = waiting(transports[this.#transportIndex]);
    this.#setState('connecting');
    this.#retryTimer = setTimeout(() => this.#attempt(), delay);
  }

  /** Renews the token before it expires: `refresh` on a WebSocket, a new request on HTTP. */
  #scheduleRenewal() {
    clearTimeout(this.#renewTimer);
    const expiry = this.#token && tokenExpiry(this.#token);
    if (!this.#options.getToken || expiry == null) return;
    this.#renewTimer = setTimeout(async () => {
      const session = this.#session;
      try {
        const token = await this.#currentToken(true);
        if (session === this.#session && this.#state === 'connected') {
          session.renew(token);
          this.#scheduleRenewal();
        }
      } catch (error) {
        // The connection ends at expiry; getToken is tried again on the reconnect.
        this.emit('error', new HeraldError('token_unavailable', `getToken failed: ${error?.message ?? error}`));
      }
    }, renewalDelay(expiry * 1000 - Date.now()));
  }

  /** While on a fallback transport, tries a WebSocket now and then; when one opens, moves to it. */
  #scheduleUpgrade() {
    clearTimeout(this.#upgradeTimer);
    this.#upgradeTimer = setTimeout(async () => {
      const session = this.#session;
      const works = await WebSocketSession.probe(this.#host(), this.#token);
      if (session !== this.#session || this.#state !== 'connected') return;
      if (!works) return this.#scheduleUpgrade();
      session.stop();
      this.#session = null;
      this.#roundStart = this.#transportIndex = 0;
      this.#attempt();
    }, this.#options.upgradeInterval);
  }

  /** Connects now if a reconnect is waiting: the network came back, or the page is seen again. */
  #hurry() {
    if (this.#retryTimer && this.#state === 'connecting') {
      clearTimeout(this.#retryTimer);
      this.#backoff.reset();
      this.#attempt();
    } else if (this.#state === 'connected') {
      this.#session?.check();
    }
  }

  #listenToTheBrowser() {
    if (this.#unlisten.length || typeof globalThis.addEventListener !== 'function') return;
    const online = () => this.#hurry();
    globalThis.addEventListener('online', online);
    this.#unlisten.push(() => globalThis.removeEventListener('online', online));
    const doc = globalThis.document;
    if (doc?.addEventListener) {
      const visible = () => doc.visibilityState === 'visible' && this.#hurry();
      doc.addEventListener('visibilitychange', visible);
      this.#unlisten.push(() => doc.removeEventListener('visibilitychange', visible));
    }
  }

  /** The subscription was dropped by the app. */
  _forget(subscription) {
    if (this.#subscriptions.get(subscription.channel) !== subscription) return;
    this.#subscriptions.delete(subscription.channel);
    this.#session?.remove?.(subscription);
  }

  /** A call of the server API with the client's token. */
  async #api(method, path, body) {
    const fetch = this.#options.fetch ?? globalThis.fetch;
    const headers = { Accept: 'application/json' };
    const token = await this.#currentToken();
    if (token) headers.Authorization = `Bearer ${token}`;
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    let response;
    try {
      response = await fetch(this.#endpoints.http + path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (error) {
      throw new HeraldError('network_error', `${method} ${path}: ${error?.message ?? error}`);
    }
    if (!response.ok) throw await answerError(response);
    return response.json();
  }
}

// ---- transports ----
// A session is one attempt at one transport: start(), stop(), add(sub), remove(sub),
// resync(sub), renew(token), check(). It reports to its host: opened, failed, subscribed,
// publication, presence.

/** WebSocket: JSON commands and pushes, one connection for every subscription. */
class WebSocketSession {
  name = 'websocket';
  #host;
  #token;
  #socket = null;
  #opened = false;
  #stopped = false;
  #nextId = 1;
  /** @type {Map<number, {resolve: Function, reject: Function, timer: any}>} */
  #pending = new Map();
  #disconnect = null;
  #openTimer = null;
  #pingTimer = null;

  constructor(host, token) {
    this.#host = host;
    this.#token = token;
  }

  available() {
    return typeof (this.#host.options.WebSocket ?? globalThis.WebSocket) === 'function';
  }

  start() {
    const WebSocket = this.#host.options.WebSocket ?? globalThis.WebSocket;
    try {
      this.#socket = new WebSocket(this.#host.endpoints.ws);
    } catch (error) {
      this.#end({ error: new HeraldError('websocket_failed', String(error?.message ?? error)) });
      return;
    }
    const socket = this.#socket;
    this.#openTimer = setTimeout(
      () => this.#end({ error: new HeraldError('connect_timeout', 'the WebSocket did not open in time') }),
      this.#host.options.connectTimeout,
    );
    socket.onopen = () => this.#greet();
    socket.onmessage = (event) => this.#frame(textOf(event.data));
    socket.onerror = () => {}; // a close follows, with the code
    socket.onclose = (event) => this.#closed(event.code, event.reason);
  }

  /** `connect` first: the token, and the client id to take back. */
  async #greet() {
    const fields = {};
    if (this.#token) fields.token = this.#token;
    const client = this.#host.client();
    if (client) fields.client = client;
    const info = this.#host.options.info;
    if (info !== undefined && !this.#token) fields.info = info;
    const positions = {};
    for (const subscription of this.#host.subscriptions()) {
      if (subscription.position && this.#host.managed(subscription.channel)) positions[subscription.channel] = subscription.position;
    }
    if (this.#token && Object.keys(positions).length) fields.positions = positions;
    let connected;
    while (!connected) {
      try {
        connected = await this.request('connect', fields);
      } catch (error) {
        if (error.code === 'invalid_client' && fields.client) {
          delete fields.client; // not valid any more: connect as a new client
        } else if (error.code === 'auth_not_configured') {
          this.#host.error(this, error); // the server takes every client as anonymous
          connected = {};
        } else {
          return this.#end(outcomeOf(error));
        }
      }
    }
    if (this.#stopped) return;
    clearTimeout(this.#openTimer);
    this.#opened = true;
    this.#host.opened(this, connected.client);
    // The token's `subs` were subscribed by the server on connect, from the positions given.
    for (const subscription of this.#host.subscriptions()) {
      if (!this.#host.managed(subscription.channel)) this.add(subscription);
    }
    this.#keepAlive();
  }

  add(subscription) {
    if (!this.#opened) return; // subscribed once connected
    const fields = { channel: subscription.channel };
    const position = subscription.position;
    const cursor = this.#host.cursor();
    if (position) fields.since = position;
    else if (cursor) fields.cursor = cursor;
    this.request('subscribe', fields).then(
      (result) => subscription.active && this.#host.subscribed(this, subscription.channel, result),
      (error) => {
        if (this.#stopped || !subscription.active) return;
        if (error.code === 'already_subscribed') return;
        if (error.code === 'engine_unavailable' || error.code === 'request_timeout' || error.code === 'disconnected') {
          // Passing trouble: try the whole connection again.
          this.#end({ error, opened: true });
        } else {
          this.#host.refused(this, subscription.channel, error);
        }
      },
    );
  }

  remove(subscription) {
    if (this.#opened) this.request('unsubscribe', { channel: subscription.channel }).catch(() => {});
  }

  /** A gap: subscribe again from the position held. */
  resync(subscription) {
    if (!this.#opened || !subscription) return;
    this.request('unsubscribe', { channel: subscription.channel }).then(
      () => this.add(subscription),
      () => {},
    );
  }

  renew(token) {
    this.#token = token;
    this.request('refresh', { token }).catch((error) => {
      if (!this.#stopped) this.#end({ error, opened: true, tokenExpired: true });
    });
  }

  /** Makes sure the connection is alive (the page was hidden a while): a ping now. */
  check() {
    this.#ping();
  }

  /** @returns {Promise<any>} the result of the command, or a HeraldError */
  request(op, fields = {}) {
    return new Promise((resolve, reject) => {
      if (this.#stopped || !this.#socket || this.#socket.readyState !== 1) {
        reject(new HeraldError('disconnected', 'not connected'));
        return;
      }
      const id = this.#nextId++;
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        reject(new HeraldError('request_timeout', `no answer to ${op} in time`));
      }, this.#host.options.requestTimeout);
      this.#pending.set(id, { resolve, reject, timer });
      this.#socket.send(JSON.stringify({ id, op, ...fields }));
    });
  }

  #frame(text) {
    let message;
    try {
      message = JSON.parse(text);
    } catch {
      return this.#end({ error: new HeraldError('protocol_error', 'the server sent a frame that is not JSON'), opened: this.#opened });
    }
    this.#keepAlive();
    if (typeof message.id === 'number') {
      const pending = this.#pending.get(message.id);
      if (!pending) return;
      this.#pending.delete(message.id);
      clearTimeout(pending.timer);
      if (message.error) pending.reject(new HeraldError(message.error.code, message.error.message));
      else pending.resolve(message.result);
    } else if (message.disconnect) {
      this.#disconnect = message.disconnect;
    } else if (message.subscribed) {
      this.#host.serverSubscribed(this, message.subscribed.channel, message.subscribed);
    } else if (message.unsubscribed) {
      this.#host.unsubscribed(this, message.unsubscribed.channel, message.unsubscribed.reason);
    } else if (message.join || message.leave) {
      const change = message.join ? 'join' : 'leave';
      this.#host.presence(this, message.channel, change, message[change]);
    } else if (typeof message.offset === 'number') {
      this.#host.publication(this, message);
    }
  }

  /** A ping after a quiet spell: the server's WebSocket pings are invisible to a page. */
  #keepAlive() {
    clearTimeout(this.#pingTimer);
    if (this.#stopped) return;
    this.#pingTimer = setTimeout(() => this.#ping(), this.#host.options.pingInterval);
  }

  #ping() {
    if (!this.#opened || this.#stopped) return;
    this.request('ping').catch((error) => {
      if (!this.#stopped && error.code === 'request_timeout') {
        this.#end({ error: new HeraldError('no_pong', 'the server did not answer a ping'), opened: true });
      }
    });
  }

  #closed(code, reason) {
    if (this.#stopped) return;
    const disconnect = this.#disconnect ?? (code >= 4000 ? { code, reason, reconnect: true } : null);
    const tokenExpired = code === 4003 || disconnect?.code === 4003;
    const error = tokenExpired || disconnect ? undefined : new HeraldError('connection_closed', `WebSocket closed (${code}${reason ? `: ${reason}` : ''})`, code);
    this.#end({ opened: this.#opened, disconnect, tokenExpired, error });
  }

  #end(outcome) {
    if (this.#stopped) return;
    this.stop();
    this.#host.failed(this, { opened: this.#opened, ...outcome });
  }

  stop() {
    this.#stopped = true;
    clearTimeout(this.#openTimer);
    clearTimeout(this.#pingTimer);
    for (const { reject, timer } of this.#pending.values()) {
      clearTimeout(timer);
      reject(new HeraldError('disconnected', 'the connection was lost before an answer'));
    }
    this.#pending.clear();
    const socket = this.#socket;
    if (socket) {
      socket.onopen = socket.onmessage = socket.onclose = null;
      try {
        socket.close();
      } catch {
        // already closing
      }
    }
  }

  /** Whether a WebSocket to the server opens and answers now. */
  static probe(host, token) {
    return new Promise((resolve) => {
      const session = new WebSocketSession(
        {
          ...host,
          subscriptions: () => [],
          opened: (probe) => {
            probe.stop();
            resolve(true);
          },
          failed: () => resolve(false),
          error: () => {},
        },
        token,
      );
      if (!session.available()) return resolve(false);
      session.start();
    });
  }
}

/** What the HTTP transports share: the query of every subscription and the session's rhythm. */
class HttpSession {
  host;
  token;
  opened = false;
  stopped = false;
  /** Whether the next request goes out with `positions` (a new set of channels). */
  #restartQueued = false;

  constructor(host, token) {
    this.host = host;
    this.token = token;
  }

  /** `channel=..&since=CURSOR&positions={..}`: every subscription, each from its position. */
  query(extra = {}) {
    const query = new URLSearchParams();
    const positions = {};
    for (const subscription of this.host.subscriptions()) {
      // The token's `subs` are added by the server; their positions still go.
      if (!this.host.managed(subscription.channel)) query.append('channel', subscription.channel);
      if (subscription.position) positions[subscription.channel] = subscription.position;
    }
    // The cursor resumes channels without a known position and keeps the client's id.
    const cursor = this.host.cursor();
    if (cursor) query.set('since', cursor);
    if (Object.keys(positions).length) query.set('positions', JSON.stringify(positions));
    const info = this.host.options.info;
    if (info !== undefined && !this.token) query.set('info', JSON.stringify(info));
    for (const [key, value] of Object.entries(extra)) query.set(key, String(value));
    return query;
  }

  headers() {
    return this.token ? { Authorization: `Bearer ${this.token}` } : {};
  }

  /** The channels changed: one new request for all, once the current task is done. */
  restartSoon() {
    if (this.#restartQueued || this.stopped) return;
    this.#restartQueued = true;
    queueMicrotask(() => {
      this.#restartQueued = false;
      if (!this.stopped) this.restart();
    });
  }

  add() {
    this.restartSoon();
  }

  remove() {
    this.restartSoon();
  }

  resync() {
    this.restartSoon();
  }

  renew(token) {
    this.token = token;
    this.restartSoon();
  }

  check() {}

  /** Makes a new request for the current subscriptions (each transport has its own). */
  restart() {
    throw new Error('HttpSession.restart is defined by SseSession and PollSession');
  }

  /** Ends the requests without telling the host. */
  stop() {
    this.stopped = true;
  }

  /** The first answer: the session is open; each channel's subscribe result. */
  announce(subscribed) {
    if (!this.opened) {
      this.opened = true;
      this.host.opened(this, null);
    }
    for (const result of subscribed) this.host.subscribed(this, result.channel, result);
  }

  /**
   * An error answer. A request of several channels fails as a whole when one is refused (a
   * channel the token does not grant, say): each is then asked on its own, the refused ones
   * end, and the rest carry on.
   */
  async failWith(error) {
    const subscriptions = this.host.subscriptions();
    if ((error.status === 400 || error.status === 403) && !this.stopped) {
      /** @type {[Subscription, HeraldError][]} */
      let refused = subscriptions.length === 1 ? [[subscriptions[0], error]] : [];
      if (subscriptions.length > 1) {
        const fetch = this.host.options.fetch ?? globalThis.fetch;
        const answers = await Promise.all(
          subscriptions.map((subscription) => {
            const query = new URLSearchParams({ channel: subscription.channel, timeout: '0' });
            return fetch(`${this.host.endpoints.http}/poll?${query}`, { headers: this.headers() }).then(
              (response) => (response.status === 400 || response.status === 403 ? answerError(response) : null),
              () => null,
            );
          }),
        );
        refused = subscriptions.map((subscription, index) => [subscription, answers[index]]).filter(([, why]) => why);
      }
      if (this.stopped) return;
      for (const [subscription, why] of refused) this.host.refused(this, subscription.channel, why);
      if (refused.length) return this.restart();
    }
    this.end(outcomeOf(error));
  }

  end(outcome) {
    if (this.stopped) return;
    this.stop();
    this.host.failed(this, { opened: this.opened, ...outcome });
  }
}

/** SSE: `GET /sse` with `EventSource` where there is one, else read with `fetch` streaming. */
class SseSession extends HttpSession {
  name = 'sse';
  #source = null;
  #abort = null;
  #openTimer = null;
  #idleTimer = null;
  /** Channels of the current request that have had their subscribe result. */
  #announced = false;

  available() {
    return typeof (this.host.options.EventSource ?? globalThis.EventSource) === 'function' || typeof (this.host.options.fetch ?? globalThis.fetch) === 'function';
  }

  start() {
    this.restart();
  }

  restart() {
    this.#close();
    if (this.host.subscriptions().length === 0) {
      // Nothing to stream: open, and idle until a subscription comes.
      if (!this.opened) this.announce([]);
      return;
    }
    this.#announced = false;
    this.#openTimer = setTimeout(
      () => this.end({ error: new HeraldError('connect_timeout', 'the SSE stream did not open in time') }),
      this.host.options.connectTimeout,
    );
    const EventSource = this.host.options.EventSource ?? globalThis.EventSource;
    if (typeof EventSource === 'function') this.#viaEventSource(EventSource);
    else this.#viaFetch();
  }

  /** One SSE event, however it was read. */
  #event(type, data, id) {
    if (this.stopped) return;
    if (id) this.host.cursorSeen(this, id);
    let value;
    try {
      value = JSON.parse(data);
    } catch {
      return this.end({ error: new HeraldError('protocol_error', 'the server sent an SSE event that is not JSON') });
    }
    if (type === 'cursor') {
      clearTimeout(this.#openTimer);
      this.host.cursorSeen(this, value.cursor);
      this.#announced = true;
      this.announce(value.subscribed ?? []);
    } else if (type === 'message') {
      this.host.publication(this, value);
    } else if (type === 'join' || type === 'leave') {
      this.host.presence(this, value.channel, type, value[type]);
    } else if (type === 'subscribed') {
      this.host.serverSubscribed(this, value.channel, value);
    } else if (type === 'unsubscribed') {
      // The stream goes on without the channel; the next one is opened without it.
      this.host.unsubscribed(this, value.channel, value.reason);
    } else if (type === 'disconnect') {
      const disconnect = { code: value.code, reason: value.reason, reconnect: value.reconnect };
      this.end({ disconnect, tokenExpired: value.code === 4003 });
    }
    // `recovery`: its news came in the opening's subscribe results.
  }

  #viaEventSource(EventSource) {
    const url = `${this.host.endpoints.http}/sse?${this.query(this.token ? { token: this.token } : {})}`;
    const source = new EventSource(url);
    this.#source = source;
    for (const type of ['cursor', 'join', 'leave', 'subscribed', 'unsubscribed', 'disconnect', 'recovery']) {
      source.addEventListener(type, (event) => this.#event(type, event.data, event.lastEventId));
    }
    source.onmessage = (event) => this.#event('message', event.data, event.lastEventId);
    // The browser would reconnect on its own, from the URL it has: the SDK reconnects instead,
    // from the positions it holds, with its backoff and a fresh token.
    source.onerror = () => {
      if (this.stopped || source !== this.#source) return;
      const wasOpen = this.#announced;
      this.#close();
      if (wasOpen) this.end({ error: new HeraldError('connection_lost', 'the SSE stream was cut') });
      else this.#whyRefused();
    };
  }

  /** EventSource hides why a stream was refused: a short poll of the same channels says. */
  async #whyRefused() {
    const fetch = this.host.options.fetch ?? globalThis.fetch;
    let error = new HeraldError('connection_failed', 'the SSE stream could not be opened');
    try {
      const response = await fetch(`${this.host.endpoints.http}/poll?${this.query({ timeout: 0 })}`, { headers: this.headers() });
      if (!response.ok && response.status < 500) error = await answerError(response);
    } catch {
      // the server cannot be reached at all
    }
    if (this.stopped) return;
    if (error.status) this.failWith(error);
    else this.end({ error });
  }

  async #viaFetch() {
    const fetch = this.host.options.fetch ?? globalThis.fetch;
    const abort = new AbortController();
    this.#abort = abort;
    let response;
    try {
      response = await fetch(`${this.host.endpoints.http}/sse?${this.query()}`, {
        headers: { Accept: 'text/event-stream', ...this.headers() },
        signal: abort.signal,
      });
    } catch (error) {
      if (abort === this.#abort) this.end({ error: new HeraldError('connection_failed', `SSE: ${error?.message ?? error}`) });
      return;
    }
    if (abort !== this.#abort) return;
    if (!response.ok) return this.failWith(await answerError(response));
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = '';
    let event = { type: 'message', data: [], id: '' };
    const idle = () => {
      clearTimeout(this.#idleTimer);
      // The server writes a heartbeat every 15 s by default: three missed means gone.
      this.#idleTimer = setTimeout(() => abort.abort(), 45000);
    };
    idle();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done || abort !== this.#abort) break;
        idle();
        buffer += decoder.decode(value, { stream: true });
        let newline;
        while ((newline = buffer.search(/\r\n|\r|\n/)) >= 0) {
          const line = buffer.slice(0, newline);
          buffer = buffer.slice(newline + (buffer.startsWith('\r\n', newline) ? 2 : 1));
          if (line === '') {
            if (event.data.length) this.#event(event.type, event.data.join('\n'), event.id);
            event = { type: 'message', data: [], id: '' };
            continue;
          }
          if (line.startsWith(':')) continue;
          const colon = line.indexOf(':');
          const field = colon < 0 ? line : line.slice(0, colon);
          const text = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
          if (field === 'data') event.data.push(text);
          else if (field === 'event') event.type = text;
          else if (field === 'id') event.id = text;
        }
      }
    } catch {
      // cut, aborted, or timed out: below
    }
    clearTimeout(this.#idleTimer);
    if (abort === this.#abort && !this.stopped) {
      const wasOpen = this.#announced;
      this.end({ error: new HeraldError(wasOpen ? 'connection_lost' : 'connection_failed', 'the SSE stream ended'), opened: this.opened && wasOpen });
    }
  }

  #close() {
    clearTimeout(this.#openTimer);
    clearTimeout(this.#idleTimer);
    if (this.#source) {
      this.#source.onerror = this.#source.onmessage = null;
      this.#source.close();
      this.#source = null;
    }
    this.#abort?.abort();
    this.#abort = null;
  }

  stop() {
    this.stopped = true;
    this.#close();
  }
}

/** Long-polling: `GET /poll` again and again, with the cursor of the answer before. */
class PollSession extends HttpSession {
  name = 'poll';
  #abort = null;
  /** Which request is current: a restart starts a new loop and the old one stops. */
  #generation = 0;

  available() {
    return typeof (this.host.options.fetch ?? globalThis.fetch) === 'function';
  }

  start() {
    this.restart();
  }

  restart() {
    this.#abort?.abort();
    this.#generation += 1;
    this.#loop(this.#generation);
  }

  async #loop(generation) {
    const fetch = this.host.options.fetch ?? globalThis.fetch;
    let first = true;
    while (!this.stopped && generation === this.#generation) {
      if (this.host.subscriptions().length === 0) {
        if (!this.opened) this.announce([]);
        return;
      }
      const abort = new AbortController();
      this.#abort = abort;
      // The first poll of a set of channels comes back at once, to open the session.
      const wait = first && !this.opened ? 0 : this.host.options.pollTimeout;
      const timer = setTimeout(() => abort.abort(), this.host.options.connectTimeout + wait * 1000);
      const hadPosition = new Map(this.host.subscriptions().map((s) => [s.channel, s.position != null]));
      let response;
      let body = null;
      try {
        response = await fetch(`${this.host.endpoints.http}/poll?${this.query({ timeout: wait })}`, {
          headers: { Accept: 'application/json', ...this.headers() },
          signal: abort.signal,
        });
        if (response.status === 200) body = await response.json();
      } catch (error) {
        clearTimeout(timer);
        if (generation !== this.#generation || this.stopped) return;
        return this.end({ error: new HeraldError('connection_failed', `poll: ${error?.message ?? error}`) });
      } finally {
        clearTimeout(timer);
      }
      if (generation !== this.#generation || this.stopped) return;
      if (response.status !== 200 && response.status !== 204) return this.failWith(await answerError(response));
      const cursor = body?.cursor ?? response.headers.get('Herald-Cursor');
      if (cursor) this.host.cursorSeen(this, cursor);
      if (first) {
        first = false;
        const unrecovered = new Map((body?.recovery ?? []).map((notice) => [notice.channel, notice]));
        this.announce(
          [...hadPosition].map(([channel, resumed]) => {
            const notice = unrecovered.get(channel);
            if (notice) return { channel, position: notice.position, recovered: false };
            return { channel, position: null, recovered: resumed ? true : undefined };
          }),
        );
      } else {
        for (const notice of body?.recovery ?? []) {
          this.host.subscribed(this, notice.channel, { position: notice.position, recovered: false });
        }
      }
      for (const event of body?.events ?? []) this.host.presence(this, event.channel, event.type, event[event.type]);
      for (const publication of body?.messages ?? []) this.host.publication(this, publication);
    }
  }

  stop() {
    this.stopped = true;
    this.#generation += 1;
    this.#abort?.abort();
  }
}
