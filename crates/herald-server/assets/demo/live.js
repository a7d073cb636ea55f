// Live broadcast: the presenter publishes slide changes and commentary on `demo:live:ROOM`;
// viewers follow, a late one catches up from history, and the viewer count is Herald's
// presence (clients that declared the viewer role).
import { connect, el, clock, roomFromUrl } from './common.js';

const SLIDES = [
  ['Herald', 'One binary for real-time: publish to a channel, every subscriber gets it.'],
  ['Transports', 'WebSocket, Server-Sent Events, NDJSON streaming, long-polling, webhooks.'],
  ['Recovery', 'Positions and cursors: after a reconnect, exactly what was missed, once.'],
  ['Presence', 'Who is here, with joins and leaves pushed as they happen.'],
  ['Scale out', 'Redis or NATS behind it; several nodes behave as one server.'],
  ['SDKs', 'JavaScript and Rust clients that reconnect, recover and fall back on their own.'],
  ['Thank you', 'Questions? Ask in the chat demo.'],
];
const role = document.querySelector('script[data-role]').dataset.role; // module scripts have no currentScript
const room = roomFromUrl('keynote');
const channel = `demo:live:${room}`;
const herald = connect({ role });
const commentary = document.getElementById('commentary');
document.getElementById('slide-total').textContent = String(SLIDES.length);
let slide = 0;

function showSlide(number) {
  slide = Math.max(1, Math.min(SLIDES.length, number));
  const [title, text] = SLIDES[slide - 1];
  document.getElementById('slide-title').textContent = title;
  document.getElementById('slide-text').textContent = text;
  document.querySelector('[data-test="slide"]').textContent = String(slide);
}

function comment(publication) {
  commentary.querySelector('.empty')?.remove();
  commentary.append(el('li', {}, el('span', { class: 'muted small' }, `${clock(publication.time)} `), publication.data.comment));
  commentary.scrollTop = commentary.scrollHeight;
}

function apply(publication) {
  const data = publication.data ?? {};
  if (Number.isInteger(data.slide)) showSlide(data.slide);
  if (typeof data.comment === 'string') comment(publication);
}

const viewers = new Map(); // client id → role
function countViewers() {
  document.querySelector('[data-test="viewers"]').textContent =
    String([...viewers.values()].filter((who) => who === 'viewer').length);
}

async function start() {
  let since;
  try {
    // Catch up: the latest slide and the recent commentary.
    const page = await herald.history(channel, { limit: 100, reverse: true });
    for (const publication of page.publications.reverse()) apply(publication);
    since = page.position;
  } catch (error) {
    console.warn('history:', error.message);
  }
  const subscription = herald.subscribe(channel, since ? { since } : {});
  subscription.on('publication', apply);
  subscription.on('subscribed', async () => {
    const { clients } = await subscription.presence();
    viewers.clear();
    for (const entry of clients) viewers.set(entry.client, entry.info?.role);
    countViewers();
  });
  subscription.on('join', (entry) => {
    viewers.set(entry.client, entry.info?.role);
    countViewers();
  });
  subscription.on('leave', (entry) => {
    viewers.delete(entry.client);
    countViewers();
  });
  if (role === 'presenter' && slide === 0) publishSlide(1);
}

function publishSlide(number) {
  const next = Math.max(1, Math.min(SLIDES.length, number));
  herald.publish(channel, { slide: next }).catch((error) => alert(`not sent: ${error.message}`));
}

if (role === 'presenter') {
  document.getElementById('next').onclick = () => publishSlide(slide + 1);
  document.getElementById('previous').onclick = () => publishSlide(slide - 1);
  document.getElementById('comment-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const input = event.target.elements.text;
    if (!input.value.trim()) return;
    herald.publish(channel, { comment: input.value.trim() }).catch((error) => alert(`not sent: ${error.message}`));
    input.value = '';
  });
}

start();
