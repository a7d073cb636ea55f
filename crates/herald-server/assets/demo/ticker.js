// Tickers: Herald's own publisher sends every symbol's quote in one publication per tick, and
// every match's score; the page shows the latest, a count of updates and a chart of one symbol.
import { connect, el } from './common.js';

const herald = connect();
const quotes = document.querySelector('[data-test="quotes"]');
const updates = document.querySelector('[data-test="updates"]');
const scores = document.getElementById('scores');
const line = document.querySelector('#chart polyline');
let chartSymbol = null;
const series = [];
let count = 0;

function renderQuotes(list) {
  chartSymbol ??= list[0]?.symbol;
  document.getElementById('chart-symbol').textContent = chartSymbol ?? '';
  quotes.replaceChildren(...list.map((quote) => {
    const direction = quote.change > 0 ? 'up' : quote.change < 0 ? 'down' : '';
    return el('tr', { dataset: { test: 'quote', symbol: quote.symbol }, style: 'cursor:pointer', onclick: () => pick(quote.symbol) },
      el('td', {}, el('b', {}, quote.symbol)),
      el('td', { class: 'num' }, quote.price.toFixed(2)),
      el('td', { class: `num ${direction}` }, `${quote.change > 0 ? '+' : ''}${quote.change.toFixed(2)}%`));
  }));
  const chosen = list.find((quote) => quote.symbol === chartSymbol);
  if (chosen) {
    series.push(chosen.price);
    if (series.length > 120) series.shift();
    const low = Math.min(...series);
    const high = Math.max(...series);
    const span = high - low || 1;
    line.setAttribute('points', series.map((price, i) => `${(i / 119) * 300},${95 - ((price - low) / span) * 90}`).join(' '));
  }
}

function pick(symbol) {
  chartSymbol = symbol;
  series.length = 0;
}

function renderScores(games) {
  scores.replaceChildren(...games.map((game) =>
    el('tr', { dataset: { test: 'score' } },
      el('td', {}, `${game.home} – ${game.away}`),
      el('td', { class: 'num' }, el('b', {}, `${game.home_goals} : ${game.away_goals}`)),
      el('td', { class: 'num' }, `${game.minute}'`))));
}

/** The recent past from history (the chart's last minute, the latest scores), then live. */
async function follow(channel, limit, show) {
  let since;
  try {
    const page = await herald.history(channel, { limit, reverse: true });
    for (const publication of page.publications.reverse()) show(publication.data, false);
    since = page.position;
  } catch (error) {
    console.warn('history:', error.message);
  }
  herald.subscribe(channel, since ? { since } : {}).on('publication', ({ data }) => show(data, true));
}

follow('demo:ticker:stocks', 120, (data, live) => {
  if (live) {
    count += 1;
    updates.textContent = String(count);
  }
  if (Array.isArray(data?.quotes)) renderQuotes(data.quotes);
});
follow('demo:ticker:sports', 1, (data) => {
  if (Array.isArray(data?.games)) renderScores(data.games);
});
