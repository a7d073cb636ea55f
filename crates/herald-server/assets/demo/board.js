// Multiplayer board: each player publishes its cursor (at most once per animation frame) on a
// channel without history; everyone draws everyone. Players and their count come from
// Herald's presence; the rate counts messages received, the latency times one's own moves
// from publish to delivery.
import { connect, el, randomId, roomFromUrl, savedNick } from './common.js';

const room = roomFromUrl();
const channel = `demo-signal:board:${room}`;
const me = `${savedNick()}-${randomId(3)}`;
const color = `hsl(${Math.floor(Math.random() * 360)} 70% 50%)`;
const herald = connect({ name: me, color });
const canvas = document.querySelector('[data-test="canvas"]');
const context = canvas.getContext('2d');
const players = new Map(); // name → {x, y, color, trail, node, seen}
const present = new Map(); // client id → player name

function player(name = 'anonymous', colour = '#888') {
  if (!players.has(name)) {
    const node = el('li', { dataset: { test: 'player', name } }, name === me ? `${name} (you)` : name);
    node.style.setProperty('--dot', colour);
    players.set(name, { x: null, y: null, color: colour ?? '#888', trail: [], node });
    renderPlayers();
  }
  return players.get(name);
}

function renderPlayers() {
  const names = new Set(present.values());
  const list = [...players.entries()].filter(([name]) => names.has(name) || name === me);
  document.getElementById('players').replaceChildren(...list.map(([, entry]) => entry.node));
  document.querySelector('[data-test="peers"]').textContent = String([...names].filter((name) => name !== me).length);
}

// Counters, shown once a second.
let received = 0;
let sent = 0;
const latencies = [];
setInterval(() => {
  document.querySelector('[data-test="rate"]').textContent = String(received);
  document.getElementById('sent-rate').textContent = String(sent);
  if (latencies.length) {
    latencies.sort((a, b) => a - b);
    document.getElementById('latency').textContent = latencies[Math.floor(latencies.length / 2)].toFixed(1);
  }
  received = sent = 0;
  latencies.length = 0;
}, 1000);

const subscription = herald.subscribe(channel);
subscription.on('publication', ({ data }) => {
  received += 1;
  if (typeof data?.name !== 'string' || !Number.isFinite(data.x) || !Number.isFinite(data.y)) return;
  if (data.name === me && Number.isFinite(data.sent)) latencies.push(performance.now() - data.sent);
  const entry = player(data.name, data.color);
  entry.x = data.x;
  entry.y = data.y;
  entry.trail.push([data.x, data.y]);
  if (entry.trail.length > 24) entry.trail.shift();
  entry.node.dataset.x = data.x.toFixed(3);
  entry.node.dataset.y = data.y.toFixed(3);
});
subscription.on('subscribed', async () => {
  const { clients } = await subscription.presence();
  present.clear();
  for (const entry of clients) {
    present.set(entry.client, entry.info?.name);
    player(entry.info?.name, entry.info?.color);
  }
  renderPlayers();
});
subscription.on('join', (entry) => {
  present.set(entry.client, entry.info?.name);
  player(entry.info?.name, entry.info?.color);
  renderPlayers();
});
subscription.on('leave', (entry) => {
  present.delete(entry.client);
  renderPlayers();
});

// Publish the cursor at most once per frame, as fractions of the canvas (any size works).
let pending = null;
canvas.addEventListener('pointermove', (event) => {
  const box = canvas.getBoundingClientRect();
  pending = { x: (event.clientX - box.left) / box.width, y: (event.clientY - box.top) / box.height };
});
function frame() {
  if (pending && herald.state === 'connected') {
    herald.publish(channel, { name: me, color, ...pending, sent: performance.now() }).catch(() => {});
    sent += 1;
    pending = null;
  }
  draw();
  requestAnimationFrame(frame);
}

function draw() {
  context.clearRect(0, 0, canvas.width, canvas.height);
  context.strokeStyle = '#eef0f4';
  for (let x = 0; x < canvas.width; x += 40) context.strokeRect(x, 0, 0, canvas.height);
  for (let y = 0; y < canvas.height; y += 40) context.strokeRect(0, y, canvas.width, 0);
  for (const [name, entry] of players) {
    if (entry.x == null) continue;
    context.fillStyle = entry.color;
    entry.trail.forEach(([x, y], i) => {
      context.globalAlpha = (i + 1) / entry.trail.length / 3;
      context.beginPath();
      context.arc(x * canvas.width, y * canvas.height, 5, 0, Math.PI * 2);
      context.fill();
    });
    context.globalAlpha = 1;
    const x = entry.x * canvas.width;
    const y = entry.y * canvas.height;
    context.beginPath();
    context.arc(x, y, 9, 0, Math.PI * 2);
    context.fill();
    context.font = '13px system-ui';
    context.fillText(name === me ? 'you' : name, x + 12, y + 4);
  }
}
requestAnimationFrame(frame);
