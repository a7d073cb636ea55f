// Types of herald-client (herald.js). Checked against the JavaScript by `npm run check`
// (tsconfig.json: checkJs over herald.js, and test/types.ts uses the API through this file).

/** A place in a channel's stream: publications of one epoch are numbered by offset from 1. */
export interface Position {
  epoch: string;
  offset: number;
}

/** One message of a channel, as every transport delivers it. */
export interface Publication {
  channel: string;
  offset: number;
  epoch: string;
  data: any;
  /** Unix milliseconds when the server accepted it. */
  time: number;
  /** The publisher's info, when the channel's namespace attaches it. */
  info?: any;
}

export type TransportName = 'websocket' | 'sse' | 'poll';
export type ConnectionState = 'disconnected' | 'connecting' | 'connected';

/** A client present in a channel: its connection id, its user (null when anonymous), its info. */
export interface PresenceEntry {
  client: string;
  user: string | null;
  /** The token's `info` claim, or null. */
  info: any;
  /** Unix milliseconds when it joined. */
  since: number;
}

export interface HeraldOptions {
  /** The transports to try, in order (default all three: websocket, then sse, then poll). */
  transports?: TransportName[];
  /** A JWT to connect with. */
  token?: string;
  /**
   * What this client shows in presence while it has no token, where the channel's namespace
   * takes it (`anonymous_info = true`): any JSON, at most 1 KiB. With a token, presence shows
   * the token's `info` claim instead, and this is not sent.
   */
  info?: any;
  /**
   * Gives a token when one is needed: before the first connection, before the current one
   * expires (a WebSocket is refreshed in place; HTTP transports reconnect with it), and after
   * the server refused one.
   */
  getToken?: () => Promise<string> | string;
  /** The shortest pause before a reconnect, in ms (default 500). */
  minReconnectDelay?: number;
  /** The longest pause before a reconnect, in ms (default 20000). */
  maxReconnectDelay?: number;
  /** An attempt not open by then has failed, in ms (default 10000). */
  connectTimeout?: number;
  /** A WebSocket request unanswered by then fails, in ms (default 10000). */
  requestTimeout?: number;
  /** A WebSocket silent this long is pinged, in ms (default 20000). */
  pingInterval?: number;
  /** How long one long-poll waits on the server, in seconds (default 25). */
  pollTimeout?: number;
  /** While on a fallback transport, how often to see whether a WebSocket works again, in ms (default 30000). */
  upgradeInterval?: number;
  /** The WebSocket implementation (default the global one; in Node 20, pass `ws`'s). */
  WebSocket?: any;
  /** The EventSource implementation (default the global one, else SSE is read with fetch). */
  EventSource?: any;
  /** The fetch implementation (default the global one). */
  fetch?: typeof fetch;
}

export interface SubscribeOptions {
  /** Resume after this position: publications after it are delivered first. */
  since?: Position;
}

export interface HistoryOptions {
  limit?: number;
  since?: Position;
  reverse?: boolean;
}

export interface HistoryPage {
  channel: string;
  publications: Publication[];
  /** The channel's latest position. */
  position: Position;
  /** The oldest offset still in history (`position.offset + 1` when it is empty). */
  oldest: number;
}

export interface PresenceSnapshot {
  clients: PresenceEntry[];
  /** Users in order of first appearance, with how many clients each. */
  users: { user: string; clients: number }[];
}

export interface PublishResult {
  channel: string;
  offset: number;
  epoch: string;
}

export interface SubscribedEvent {
  channel: string;
  /** Where the subscription stands now. */
  position: Position | null;
  /** True when every publication missed since `position` follows; false when the gap was lost. */
  recovered?: boolean;
  transport: TransportName;
}

export interface UnsubscribedEvent {
  channel: string;
  /** Set when the server refused the channel. */
  error?: HeraldError;
  /** Set when the server ended the subscription (its API's `unsubscribe`): why. */
  reason?: string;
}

export interface StateEvent {
  state: ConnectionState;
  transport: TransportName | null;
}

export interface DisconnectNotice {
  code: number;
  reason: string;
  reconnect: boolean;
}

/** An error from Herald or from the SDK: `code` is the server's snake_case code where there is one. */
export class HeraldError extends Error {
  constructor(code: string, message: string, status?: number);
  readonly code: string;
  /** The HTTP status or WebSocket close code, when there was one. */
  readonly status?: number;
}

interface SubscriptionEvents {
  publication: Publication;
  subscribed: SubscribedEvent;
  unsubscribed: UnsubscribedEvent;
  join: PresenceEntry;
  leave: PresenceEntry;
  error: HeraldError;
}

/** One channel's subscription; it lives until `unsubscribe()`, across every reconnect. */
export class Subscription {
  readonly channel: string;
  /** The position of the last publication delivered, or where the subscription started. */
  readonly position: Position | null;
  /** False once `unsubscribe()` was called, or the server refused the channel or ended the subscription. */
  readonly active: boolean;
  on<E extends keyof SubscriptionEvents>(event: E, listener: (value: SubscriptionEvents[E]) => void): this;
  off<E extends keyof SubscriptionEvents>(event: E, listener: (value: SubscriptionEvents[E]) => void): this;
  history(options?: HistoryOptions): Promise<HistoryPage>;
  presence(): Promise<PresenceSnapshot>;
  unsubscribe(): void;
}

interface HeraldEvents {
  state: StateEvent;
  error: HeraldError;
  disconnect: DisconnectNotice;
  /** A subscription the server made: a channel of the token's `subs` claim, or the server API's `subscribe`. */
  subscription: Subscription;
}

/** A connection to Herald over the best transport that works. */
export class Herald {
  /** `url`: the server, `http(s)://host:port` (or a `ws(s)://` URL of it). */
  constructor(url: string, options?: HeraldOptions);
  readonly state: ConnectionState;
  /** The transport in use or being tried. */
  readonly transport: TransportName | null;
  readonly subscriptions: Map<string, Subscription>;
  on<E extends keyof HeraldEvents>(event: E, listener: (value: HeraldEvents[E]) => void): this;
  off<E extends keyof HeraldEvents>(event: E, listener: (value: HeraldEvents[E]) => void): this;
  /** Starts connecting, if not already (subscribe does it too). */
  connect(): this;
  /** Subscribes to `channel`; a second call returns the same subscription. */
  subscribe(channel: string, options?: SubscribeOptions): Subscription;
  getSubscription(channel: string): Subscription | null;
  publish(channel: string, data: any, options?: { idempotencyKey?: string }): Promise<PublishResult>;
  history(channel: string, options?: HistoryOptions): Promise<HistoryPage>;
  presence(channel: string): Promise<PresenceSnapshot>;
  /** Uses `token` from now on: a refresh of this connection, or the next one. */
  setToken(token: string): void;
  /** Ends the connection and every subscription; the object cannot be used again. */
  close(): void;
}

/** Exponential backoff with full jitter. */
export class Backoff {
  constructor(min: number, max: number, random?: () => number);
  min: number;
  max: number;
  attempt: number;
  next(): number;
  reset(): void;
}

/** The `exp` claim (Unix seconds) of a JWT, read without verifying it; null when absent. */
export function tokenExpiry(token: string): number | null;
/** The `subs` claim of a JWT (the channels the server subscribes its connections to), read without verifying it. */
export function tokenSubs(token: string | null): string[];
/** How long to wait before renewing a token valid for `remaining` ms more. */
export function renewalDelay(remaining: number): number;
/** What an error answer means for the connection. */
export function outcomeOf(error: HeraldError): { error: HeraldError; tokenExpired?: boolean; badToken?: boolean };
