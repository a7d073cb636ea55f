// What every demo page shares: one Herald client (the SDK Herald serves at /client.js), the
// status in the bar, the page's options from its URL, and a few DOM helpers.
import { Herald } from '/client.js';

/** `?transport=websocket|sse|poll` forces one transport; otherwise the SDK picks. */
export function transportsFromUrl() {
  const forced = new URLSearchParams(location.search).get('transport');
  return ['websocket', 'sse', 'poll'].includes(forced) ? [forced] : undefined;
}

/** `?room=` (letters, digits, - and _), or `fallback`. */
export function roomFromUrl(fallback = 'lobby') {
  const room = new URLSearchParams(location.search).get('room') ?? '';
  return /^[A-Za-z0-9_-]{1,40}$/.test(room) ? room : fallback;
}

/**
 * A Herald client for this page, its state shown in the bar's `data-test="status"` (the text
 * `connected` once connected) and transport. `info`: what this anonymous client shows in
 * presence (the demo namespaces take it: docs/protocol.md, "Presence info of anonymous clients").
 */
export function connect(info) {
  const herald = new Herald(location.origin, { transports: transportsFromUrl(), info });
  const status = document.querySelector('[data-test="status"]');
  const transport = document.querySelector('[data-test="transport"]');
  herald.on('state', ({ state, transport: name }) => {
    status.textContent = state;
    status.className = `status ${state}`;
    transport.textContent = name && state !== 'disconnected' ? name : '';
  });
  herald.on('error', (error) => console.warn('herald:', error.code, error.message));
  return herald;
}

/** An element: `el('li', {class: 'x', dataset: {test: 'message'}}, 'text', child)`. */
export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (key === 'dataset') Object.assign(node.dataset, value);
    else if (key === 'class') node.className = value;
    else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else if (value !== false && value != null) node.setAttribute(key, value === true ? '' : value);
  }
  node.append(...children.filter((child) => child != null));
  return node;
}

/** `14:05`, from milliseconds since the epoch. */
export function clock(time) {
  return new Date(time).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
}

/** A short random id, for a page's own name or a message's. */
export function randomId(length = 6) {
  const alphabet = 'abcdefghijkmnopqrstuvwxyz23456789';
  return Array.from(crypto.getRandomValues(new Uint8Array(length)), (byte) => alphabet[byte % alphabet.length]).join('');
}

/** The nickname of this tab (sessionStorage: two tabs are two people), or a new guest name. */
export function savedNick() {
  let nick = sessionStorage.getItem('herald-demo-nick');
  if (!nick) {
    nick = `guest-${randomId(4)}`;
    sessionStorage.setItem('herald-demo-nick', nick);
  }
  return nick;
}

export function saveNick(nick) {
  sessionStorage.setItem('herald-demo-nick', nick);
}
