// File sharing: a file goes up with one HTTP request (POST /demo/files/ROOM?name=…, the raw
// bytes); while it does, the uploader publishes its progress on the room's channel; once it is
// stored Herald announces it there. History shows a late joiner what was shared.
import { connect, el, clock, roomFromUrl, randomId, savedNick } from './common.js';

const room = roomFromUrl();
const channel = `demo:files:${room}`;
const nick = savedNick();
const herald = connect();
const files = document.querySelector('[data-test="files"]');
const uploads = document.getElementById('uploads');
const progress = new Map(); // upload id → row
const announced = new Set(); // file ids shown
const finished = new Set(); // upload ids whose file was announced: later progress notes are stale
const maxSize = Number(document.querySelector('[data-max-file-size]').dataset.maxFileSize);

function size(bytes) {
  return bytes < 1024 ? `${bytes} B` : bytes < 1048576 ? `${(bytes / 1024).toFixed(1)} KiB` : `${(bytes / 1048576).toFixed(1)} MiB`;
}

function progressRow(id, name, who) {
  if (!progress.has(id)) {
    uploads.querySelector('.empty')?.remove();
    const bar = el('progress', { max: '1', value: '0' });
    const row = el('li', { dataset: { test: 'upload' } }, el('span', { class: 'grow' }, `${name} `, el('span', { class: 'muted small' }, `from ${who}`)), bar);
    row.bar = bar;
    progress.set(id, row);
    uploads.append(row);
  }
  return progress.get(id);
}

function apply(publication) {
  const event = publication.data ?? {};
  if (event.type === 'progress' && typeof event.upload === 'string' && !finished.has(event.upload)) {
    const row = progressRow(event.upload, String(event.name), String(event.by));
    row.bar.value = event.total ? event.loaded / event.total : 0;
  } else if (event.type === 'file' && /^[0-9a-f]{16}$/.test(event.id) && !announced.has(event.id)) {
    // Anyone may publish on the room's channel: the link is made here, from the id, never
    // taken from the message (a `javascript:` URL would run in this page).
    const url = `/demo/files/${encodeURIComponent(room)}/${event.id}`;
    announced.add(event.id);
    finished.add(event.upload);
    const row = progress.get(event.upload);
    row?.remove();
    progress.delete(event.upload);
    if (progress.size === 0 && !uploads.children.length) uploads.append(el('li', { class: 'empty' }, 'Nothing in flight.'));
    document.getElementById('no-files')?.remove();
    files.prepend(el('li', { dataset: { test: 'file', id: event.id } },
      el('span', { class: 'grow' }, el('b', {}, event.name), el('br'),
        el('span', { class: 'muted small' }, `${size(event.size)} · from ${event.by} · ${clock(publication.time)}`)),
      el('a', { class: 'button secondary', href: url, download: String(event.name), dataset: { test: 'download' } }, 'Download')));
  }
}

function upload(file) {
  const id = randomId(8);
  if (file.size > maxSize) {
    uploads.querySelector('.empty')?.remove();
    uploads.append(el('li', { class: 'error-text' }, `${file.name}: larger than ${size(maxSize)}, the most this room takes`));
    return;
  }
  const url = `/demo/files/${encodeURIComponent(room)}?${new URLSearchParams({ name: file.name, by: nick, upload: id })}`;
  const request = new XMLHttpRequest();
  let last = 0;
  request.upload.onprogress = (event) => {
    // A few progress notes a second are plenty for everyone else.
    if (Date.now() - last < 200 && event.loaded < event.total) return;
    last = Date.now();
    herald.publish(channel, { type: 'progress', upload: id, name: file.name, by: nick, loaded: event.loaded, total: event.total }).catch(() => {});
  };
  request.onload = () => {
    if (request.status !== 200) {
      let message = `HTTP ${request.status}`;
      try {
        message = JSON.parse(request.responseText).error.message;
      } catch {
        // not Herald's JSON error
      }
      progressRow(id, file.name, nick).replaceChildren(el('span', { class: 'error-text' }, `${file.name}: ${message}`));
    }
  };
  request.onerror = () => progressRow(id, file.name, nick).replaceChildren(el('span', { class: 'error-text' }, `${file.name}: upload failed`));
  progressRow(id, file.name, nick);
  request.open('POST', url);
  request.setRequestHeader('Content-Type', file.type || 'application/octet-stream');
  request.send(file);
}

const input = document.querySelector('[data-test="file-input"]');
input.addEventListener('change', () => {
  for (const file of input.files) upload(file);
  input.value = '';
});
const drop = document.getElementById('drop');
drop.addEventListener('dragover', (event) => {
  event.preventDefault();
  drop.classList.add('over');
});
drop.addEventListener('dragleave', () => drop.classList.remove('over'));
drop.addEventListener('drop', (event) => {
  event.preventDefault();
  drop.classList.remove('over');
  for (const file of event.dataTransfer.files) upload(file);
});

async function start() {
  let since;
  try {
    const page = await herald.history(channel, { limit: 200, reverse: true });
    for (const publication of page.publications.reverse()) if (publication.data?.type === 'file') apply(publication);
    since = page.position;
  } catch (error) {
    console.warn('history:', error.message);
  }
  herald.subscribe(channel, since ? { since } : {}).on('publication', apply);
}
start();
