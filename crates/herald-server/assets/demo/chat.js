// Chat: messages on `demo:chat:ROOM` (history, presence with nicknames, join/leave), typing
// notices on `demo-signal:typing:ROOM` (no history: they matter only while they are fresh).
import { connect, el, clock, roomFromUrl, savedNick, saveNick } from './common.js';

const room = roomFromUrl();
const channel = `demo:chat:${room}`;
const typingChannel = `demo-signal:typing:${room}`;
const messages = document.querySelector('[data-test="messages"]');
const members = document.querySelector('[data-test="presence"]');
const nickInput = document.querySelector('[data-test="nick"]');
const typingLine = document.getElementById('typing');

let nick = savedNick();
nickInput.value = nick;
let herald = null;
/** The last message shown: a new client (another nickname) resumes after it. */
let position = null;
const shown = new Set();

/** Shows one message (each offset once, whatever happens to the connection). */
function show(publication) {
  const key = `${publication.epoch}:${publication.offset}`;
  if (shown.has(key)) return;
  shown.add(key);
  const { nick: who, text } = publication.data ?? {};
  if (typeof text !== 'string') return;
  messages.append(
    el('li', { dataset: { test: 'message', offset: publication.offset }, class: who === nick ? 'mine' : '' },
      el('span', { class: 'who' }, String(who ?? '?')), text, el('span', { class: 'when' }, clock(publication.time))),
  );
  messages.scrollTop = messages.scrollHeight;
}

/** Presence, from Herald: one line per nickname, however many tabs it has open. */
const present = new Map(); // client id → nickname
const nameOf = (entry) => String(entry.info?.nick ?? entry.user ?? 'anonymous');
function renderMembers() {
  const users = [...new Set(present.values())].sort();
  members.replaceChildren(...users.map((user) => el('li', { dataset: { test: 'member' } }, user)));
  document.getElementById('member-count').textContent = String(users.length);
}

const typing = new Map(); // nick → timer
function showTyping() {
  const names = [...typing.keys()];
  typingLine.textContent = names.length === 0 ? '' : `${names.join(', ')} ${names.length === 1 ? 'is' : 'are'} typing…`;
}

async function start() {
  herald = connect({ nick });
  if (!position) {
    // History first, then live from where it ends: no gap between the two, no duplicate.
    try {
      const page = await herald.history(channel, { limit: 50, reverse: true });
      for (const publication of page.publications.reverse()) show(publication);
      position = page.position;
    } catch (error) {
      messages.append(el('li', { class: 'empty' }, `history unavailable: ${error.message}`));
    }
  }
  const subscription = herald.subscribe(channel, position ? { since: position } : {});
  subscription.on('publication', (publication) => {
    position = { epoch: publication.epoch, offset: publication.offset };
    show(publication);
    typing.delete(publication.data?.nick);
    showTyping();
  });
  subscription.on('subscribed', async ({ recovered }) => {
    if (recovered === false) messages.append(el('li', { class: 'empty' }, 'Some messages were lost while you were away.'));
    try {
      const { clients } = await subscription.presence();
      present.clear();
      for (const entry of clients) present.set(entry.client, nameOf(entry));
      renderMembers();
    } catch (error) {
      console.warn('presence:', error.message);
    }
  });
  subscription.on('join', (entry) => {
    present.set(entry.client, nameOf(entry));
    renderMembers();
  });
  subscription.on('leave', (entry) => {
    present.delete(entry.client);
    renderMembers();
  });

  herald.subscribe(typingChannel).on('publication', ({ data }) => {
    if (!data?.nick || data.nick === nick) return;
    clearTimeout(typing.get(data.nick));
    typing.set(data.nick, setTimeout(() => {
      typing.delete(data.nick);
      showTyping();
    }, 3000));
    showTyping();
  });
}

document.getElementById('send-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const input = event.target.elements.text;
  const text = input.value.trim();
  if (!text) return;
  applyNick();
  input.value = '';
  try {
    await herald.publish(channel, { nick, text });
  } catch (error) {
    input.value = text; // not sent: keep it for another try
    messages.append(el('li', { class: 'error-text' }, `not sent: ${error.message}`));
  }
});

let lastTyping = 0;
document.querySelector('[data-test="message-input"]').addEventListener('input', () => {
  if (Date.now() - lastTyping < 2000) return;
  lastTyping = Date.now();
  herald.publish(typingChannel, { nick }).catch(() => {});
});

/** Takes the nickname typed in, if it changed. */
function applyNick() {
  const next = nickInput.value.trim().slice(0, 24);
  if (!next || next === nick) return;
  nick = next;
  saveNick(nick);
  // Presence shows the identity a connection declared: a new name is a new connection.
  herald.close();
  start();
}
document.getElementById('nick-form').addEventListener('submit', (event) => {
  event.preventDefault();
  applyNick();
});
nickInput.addEventListener('change', applyNick);

start();
