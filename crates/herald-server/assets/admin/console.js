// The admin console's live parts, over two JSON feeds of the console itself (the session
// cookie goes with them): the overview's counters and charts, and a channel's publications.

const POINTS = 60;

function sparkline(line, values) {
  const high = Math.max(1, ...values);
  line.setAttribute('points', values.map((value, i) => `${(i / (POINTS - 1)) * 100},${29 - (value / high) * 27}`).join(' '));
}

async function json(url) {
  const response = await fetch(url, { headers: { Accept: 'application/json' } });
  if (response.status === 401) {
    location.reload(); // the session ended: show the login
    throw new Error('logged out');
  }
  if (!response.ok) throw new Error(`HTTP ${response.status}`);
  return response.json();
}

/** The overview: every 2 s, the counters now; rates from the difference with the last read. */
function overview() {
  const series = { connections: [], channels: [], publishes: [], refused: [], webhook_attempts: [] };
  let last = null;
  const push = (name, value) => {
    series[name].push(value);
    if (series[name].length > POINTS) series[name].shift();
    sparkline(document.querySelector(`[data-series="${name}"]`), series[name]);
  };
  const tick = async () => {
    try {
      const now = await json('/admin/stats.json');
      push('connections', now.connections.total);
      push('channels', now.channels);
      document.getElementById('kpi-connections').textContent = String(now.connections.total);
      document.getElementById('kpi-channels').textContent = String(now.channels);
      for (const [kind, count] of Object.entries(now.connections)) {
        const cell = document.getElementById(`conn-${kind}`);
        if (cell) cell.textContent = String(count);
      }
      if (last) {
        const seconds = Math.max(0.001, (now.time - last.time) / 1000);
        for (const name of ['publishes', 'refused', 'webhook_attempts']) {
          const rate = Math.max(0, (now[name] - last[name]) / seconds);
          push(name, rate);
          document.getElementById(`kpi-${name}`).textContent = rate < 10 ? rate.toFixed(1) : String(Math.round(rate));
        }
      }
      last = now;
    } catch (error) {
      console.warn('stats:', error.message);
    }
  };
  tick();
  setInterval(tick, 2000);
}

/** A channel: new publications appear on top as they are published. */
function channel(body) {
  const name = body.dataset.channel;
  let top = Number(body.dataset.top);
  const time = (cell) => {
    cell.textContent = new Date(Number(cell.dataset.time)).toLocaleTimeString();
  };
  body.querySelectorAll('[data-time]').forEach(time);
  const tick = async () => {
    try {
      const now = await json(`/admin/channel.json?${new URLSearchParams({ name, after: String(top) })}`);
      document.getElementById('subscribers').textContent = String(now.subscribers);
      document.getElementById('top').textContent = String(now.top);
      for (const publication of now.publications) {
        if (publication.offset <= top) continue;
        document.getElementById('no-publications')?.remove();
        const row = document.createElement('tr');
        row.dataset.test = 'publication';
        row.className = 'flash';
        const cells = [String(publication.offset), '', publication.data].map((text) => {
          const cell = document.createElement('td');
          cell.textContent = text;
          return cell;
        });
        cells[0].className = 'num';
        cells[1].className = 'small muted';
        cells[1].dataset.time = String(publication.time);
        time(cells[1]);
        cells[2].className = 'mono small';
        row.append(...cells);
        body.prepend(row);
        top = publication.offset;
      }
      top = Math.max(top, now.top);
    } catch (error) {
      console.warn('channel:', error.message);
    }
  };
  setInterval(tick, 1000);
}

if (document.getElementById('kpis')) overview();
const publications = document.getElementById('publications');
if (publications) channel(publications);
