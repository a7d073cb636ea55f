// docs/clients.md, run: every snippet marked `<!-- test: NAME -->` is taken from the guide as
// written and run against the real server (HERALD_BIN), each checked on what it really printed
// or showed. Pages in headless Chromium (Debian's, driven by playwright-core) on Herald's own
// origin; JavaScript in Node (`herald-client` is ../../herald.js, `ws` this package's); shell
// with bash (curl, jq, the herald binary); Python with HERALD_TEST_PYTHON (a Python with
// `websockets`). The Rust block must be crates/herald-client/examples/subscribe.rs, which cargo
// compiles. Snippets are written against http://127.0.0.1:8750: 8750 becomes the test port.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync, mkdirSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { launchChromium, skipWithoutChromium } from '../support/browser.js';
import { startHerald, publish, until, freePort, heraldBin, skipWithoutHerald } from '../support/herald.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '../../../..');
const GUIDE = path.join(root, 'docs/clients.md');
const RUST_EXAMPLE = path.join(root, 'crates/herald-client/examples/subscribe.rs');
const SDK = path.resolve(here, '../../herald.js');
const PYTHON = process.env.HERALD_TEST_PYTHON || null;

const hasCommand = (name) => spawnSync('bash', ['-c', `command -v ${name}`]).status === 0;
const skipBrowser = skipWithoutHerald || skipWithoutChromium;
const skipCurl = skipWithoutHerald || (hasCommand('curl') ? false : 'curl is not installed');
const skipJq = skipCurl || (hasCommand('jq') ? false : 'jq is not installed (apt-get install -y jq)');
const skipPython =
  skipWithoutHerald || (PYTHON ? false : 'HERALD_TEST_PYTHON is not set: point it at a Python with `websockets` (scripts/test makes one)');

/** The marked snippets of the guide, by name: `{lang, code}`. */
function readSnippets() {
  const markdown = readFileSync(GUIDE, 'utf8');
  const snippets = new Map();
  const marked = /^<!-- test: ([\w-]+) -->\n```(\w+)\n([\s\S]*?)^```$/gm;
  for (const [, name, lang, code] of markdown.matchAll(marked)) {
    assert.ok(!snippets.has(name), `two snippets are marked ${name}`);
    snippets.set(name, { lang, code });
  }
  const markers = markdown.match(/^<!-- test:/gm)?.length ?? 0;
  assert.equal(snippets.size, markers, 'every <!-- test: NAME --> line is followed at once by a fenced block');
  return { markdown, snippets };
}

const { markdown, snippets } = readSnippets();

/** The snippet `name`, of language `lang`, aimed at `port` instead of 8750. */
function snippet(name, lang, port) {
  const found = snippets.get(name);
  assert.ok(found, `docs/clients.md has no snippet marked ${name}`);
  assert.equal(found.lang, lang, `the ${name} snippet is ${lang}`);
  return port ? found.code.replaceAll('8750', String(port)) : found.code;
}

/** The fenced block right after the marked snippet `name` (its sample output). */
function outputAfter(name) {
  const marker = markdown.indexOf(`<!-- test: ${name} -->`);
  const end = markdown.indexOf(snippets.get(name).code, marker) + snippets.get(name).code.length;
  const block = /\n```\n([\s\S]*?)\n```/.exec(markdown.slice(end + '```'.length));
  assert.ok(block, `a sample output follows the ${name} snippet`);
  return block[1];
}

const TESTED = [
  'browser-sse',
  'browser-websocket',
  'browser-sdk',
  'node-sdk',
  'node-history',
  'token-endpoint',
  'node-token',
  'rust-example',
  'cli-subscribe',
  'cli-publish',
  'cli-resume',
  'curl-publish',
  'curl-stream',
  'curl-sse',
  'curl-poll',
  'curl-positions',
  'python-websocket',
  'python-publish',
];

test('the guide marks exactly the snippets this test runs', () => {
  assert.deepEqual([...snippets.keys()].sort(), [...TESTED].sort());
});

test('the Rust snippet is crates/herald-client/examples/subscribe.rs, which cargo compiles', () => {
  assert.equal(snippet('rust-example', 'rust'), readFileSync(RUST_EXAMPLE, 'utf8'));
});

// ---- running things ----

const scratch = mkdtempSync(path.join(os.tmpdir(), 'herald-docs-'));
/** A bin directory with `herald` in it, for the shell snippets. */
const binDir = path.join(scratch, 'bin');
mkdirSync(binDir);
if (heraldBin) symlinkSync(path.resolve(heraldBin), path.join(binDir, 'herald'));

const running = new Set();
const servers = new Set();
let browser;

before(async () => {
  if (!skipBrowser) {
    browser = await launchChromium();
  }
});

after(async () => {
  await Promise.all([...running].map((process) => process.stop()));
  await browser?.close();
  await Promise.all([...servers].map((server) => server.stop()));
  rmSync(scratch, { recursive: true, force: true });
});

/** A Herald of its own for one test, as `herald serve` runs with no config unless `config`. */
async function herald(config = '') {
  const server = await startHerald({ config });
  servers.add(server);
  return server;
}

async function stopHerald(server) {
  servers.delete(server);
  await server.stop();
}

let dirs = 0;
/** A fresh working directory. */
function workDir() {
  const dir = path.join(scratch, `run-${(dirs += 1)}`);
  mkdirSync(dir);
  return dir;
}

/**
 * Starts `command` in its own process group; `out`/`err` gather what it prints, `waitFor`
 * waits for a pattern in `out`, `exited` resolves with the exit code, `stop()` ends the group.
 */
function start(command, args, { cwd, env = {} } = {}) {
  const child = spawn(command, args, {
    cwd,
    env: { ...process.env, PATH: `${binDir}:${process.env.PATH}`, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true,
  });
  const handle = { child, out: '', err: '', code: undefined };
  child.stdout.setEncoding('utf8').on('data', (chunk) => (handle.out += chunk));
  child.stderr.setEncoding('utf8').on('data', (chunk) => (handle.err += chunk));
  handle.exited = new Promise((resolve) =>
    child.on('exit', (code, signal) => {
      handle.code = code ?? signal;
      running.delete(handle);
      resolve(handle.code);
    }),
  );
  const said = () => `\n--- stdout:\n${handle.out}\n--- stderr:\n${handle.err}`;
  handle.waitFor = async (pattern, what, ms = 10000) => {
    try {
      await until(() => pattern.test(handle.out) || handle.code !== undefined, what, ms);
    } catch (error) {
      throw new Error(`${error.message}${said()}`);
    }
    if (!pattern.test(handle.out)) throw new Error(`exited (${handle.code}) before ${what}${said()}`);
  };
  /** Waits for the process to end by itself, within `ms`. */
  handle.finish = async (what, ms = 10000) => {
    const timer = setTimeout(() => handle.stop(), ms);
    const code = await handle.exited;
    clearTimeout(timer);
    assert.equal(code, 0, `${what} ended with ${code}${said()}`);
    return handle.out;
  };
  handle.stop = async () => {
    if (handle.code !== undefined) return;
    const kill = (signal) => {
      try {
        process.kill(-child.pid, signal);
      } catch {
        // gone already
      }
    };
    kill('SIGTERM');
    const hard = setTimeout(() => kill('SIGKILL'), 2000);
    await handle.exited;
    clearTimeout(hard);
  };
  running.add(handle);
  return handle;
}

const bash = (code, options) => start('bash', ['-c', code], options);

/** A JavaScript snippet as a Node module: its package imports resolved to this checkout's. */
function nodeScript(code) {
  const packages = { 'herald-client': pathToFileURL(SDK).href, ws: import.meta.resolve('ws') };
  const source = code.replace(/from '([^']+)'/g, (match, specifier) => {
    if (specifier.startsWith('node:')) return match;
    assert.ok(packages[specifier], `a snippet imports ${specifier}, which this test does not provide`);
    return `from '${packages[specifier]}'`;
  });
  const file = path.join(workDir(), 'snippet.mjs');
  writeFileSync(file, source);
  return file;
}

const node = (code, options) => start(process.execPath, [nodeScript(code)], options);

/** Waits until Herald counts `count` subscribers of `channel` (the snippet is listening). */
async function subscribers(server, channel, count = 1, headers = {}) {
  await until(async () => {
    const { channels } = await (await fetch(`${server.url}/api/channels`, { headers })).json();
    return (channels.find((entry) => entry.channel === channel)?.subscribers ?? 0) >= count;
  }, `${count} subscriber(s) of ${channel}`);
}

const lines = (text) => text.split('\n').filter((line) => line.trim() !== '');
const jsonLines = (text) => lines(text).map((line) => JSON.parse(line));

// ---- pages ----

/** The snippet page `name` served at a URL of Herald's own origin, so `/client.js`, `/sse` and `/ws` are Herald's. */
async function openPage(server, name) {
  const context = await browser.newContext();
  const page = await context.newPage();
  const log = [];
  page.on('pageerror', (error) => log.push(`page error: ${error.message}`));
  page.on('console', (message) => log.push(`${message.type()}: ${message.text()}`));
  const url = `${server.url}/docs-snippets/${name}.html`;
  await page.route(url, (route) =>
    route.fulfill({ contentType: 'text/html; charset=utf-8', body: snippet(name, 'html') }),
  );
  await page.goto(url);
  const items = () => page.$$eval('#messages li', (elements) => elements.map((element) => element.textContent));
  const status = () => page.textContent('#status');
  const waitForItems = (count, what) => until(async () => (await items()).length >= count, `${what}; the page logged: ${log.join(' | ')}`);
  return { context, page, log, items, status, waitForItems };
}

test('browser, no SDK, EventSource: publications show up, and a lost history is reported', { skip: skipBrowser }, async () => {
  const server = await herald();
  const { context, log, items, status, waitForItems } = await openPage(server, 'browser-sse');
  await until(async () => (await status()) === 'connected', 'the opening cursor event');
  await subscribers(server, 'chat:lobby');
  await publish(server.url, 'chat:lobby', { text: 'hi from the docs test' });
  await publish(server.url, 'news', { title: 'two channels, one stream' });
  await waitForItems(2, 'two publications in the page');
  assert.deepEqual(await items(), [
    'chat:lobby #1: {"text":"hi from the docs test"}',
    'news #1: {"title":"two channels, one stream"}',
  ]);

  // The memory engine restarts: history is gone. The browser reconnects with Last-Event-ID by
  // itself and Herald says recovery was impossible; then delivery goes on.
  await server.restart();
  await until(() => log.some((line) => line.startsWith('warning: not recovered:')), `the recovery notice; the page logged: ${log.join(' | ')}`);
  await until(async () => (await status()) === 'connected', 'connected again');
  await subscribers(server, 'chat:lobby');
  await publish(server.url, 'chat:lobby', { text: 'after the restart' });
  await waitForItems(3, 'a publication after the restart');
  assert.equal((await items())[2], 'chat:lobby #1: {"text":"after the restart"}');
  await context.close();
  await stopHerald(server);
});

test('browser, no SDK, WebSocket: publications show up; it reconnects and resubscribes after a restart', { skip: skipBrowser }, async () => {
  const server = await herald();
  const { context, log, items, status, waitForItems } = await openPage(server, 'browser-websocket');
  await until(async () => (await status()) === 'connected', 'subscribed');
  await publish(server.url, 'chat:lobby', { text: 'hi from the docs test' });
  await publish(server.url, 'chat:lobby', { text: 'and another' });
  await waitForItems(2, 'two publications in the page');
  assert.deepEqual(await items(), ['#1: {"text":"hi from the docs test"}', '#2: {"text":"and another"}']);

  await server.restart();
  await until(
    () => log.some((line) => line === 'warning: publications were lost: reload the state'),
    `recovered:false after the restart; the page logged: ${log.join(' | ')}`,
  );
  await until(async () => (await status()) === 'connected', 'connected again');
  await publish(server.url, 'chat:lobby', { text: 'after the restart' });
  await waitForItems(3, 'a publication after the restart');
  assert.equal((await items())[2], '#1: {"text":"after the restart"}');
  assert.ok(!log.some((line) => line.startsWith('page error')), log.join(' | '));
  await context.close();
  await stopHerald(server);
});

test('browser, SDK from /client.js: publications show up, and the form publishes', { skip: skipBrowser }, async () => {
  const server = await herald();
  const { context, page, log, items, status, waitForItems } = await openPage(server, 'browser-sdk');
  await until(async () => (await status()) === 'connected (websocket)', 'connected over WebSocket');
  await subscribers(server, 'chat:lobby');
  await publish(server.url, 'chat:lobby', { text: 'hi from the docs test' });
  await waitForItems(1, 'a publication in the page');
  await page.fill('#send input[name=text]', 'sent from the page');
  await page.press('#send input[name=text]', 'Enter');
  await waitForItems(2, "the page's own publication back");
  assert.deepEqual(await items(), ['#1: hi from the docs test', '#2: sent from the page']);
  assert.equal(await page.inputValue('#send input[name=text]'), '');
  assert.ok(!log.some((line) => line.startsWith('page error') || line.startsWith('error')), log.join(' | '));
  await context.close();
  await stopHerald(server);
});

// ---- Node ----

test('Node SDK with ws: prints what the guide says it prints, and ends on "bye"', { skip: skipWithoutHerald }, async () => {
  const server = await herald();
  const script = node(snippet('node-sdk', 'js', server.port));
  await script.waitFor(/^subscribed at/m, 'subscribed');
  await publish(server.url, 'chat:lobby', { text: 'hi' });
  await publish(server.url, 'chat:lobby', { text: 'bye' });
  const out = await script.finish('the node-sdk snippet');
  const epoch = /epoch: '([^']+)'/.exec(out)[1];
  const expected = outputAfter('node-sdk').replace(/k3v9x0aa/g, epoch);
  assert.deepEqual(lines(out).map((line) => line.trimEnd()), lines(expected));
  assert.equal(script.err, '');
  await stopHerald(server);
});

test('Node SDK without ws: SSE over fetch, and history newest first', { skip: skipWithoutHerald }, async () => {
  const server = await herald();
  for (const title of ['one', 'two', 'three']) await publish(server.url, 'news', { title });
  const out = await node(snippet('node-history', 'js', server.port)).finish('the node-history snippet');
  assert.deepEqual(lines(out), [
    'news is at offset 3 (via sse); the last 3:',
    '3 {"title":"three"}',
    '2 {"title":"two"}',
    '1 {"title":"one"}',
  ]);
  await stopHerald(server);
});

test('tokens: the backend endpoint mints tokens that getToken hands the SDK; anonymous is refused', { skip: skipWithoutHerald }, async () => {
  const secret = 'docs-test-hmac-secret-0123456789abcdefghijklmnop';
  const apiKey = 'docs-test-api-key-0123456789abcdefghijklmnop';
  const server = await herald(`[api]\nkeys = ["${apiKey}"]\n\n[auth]\nhmac_secret = "${secret}"\n`);
  const anonymous = await fetch(`${server.url}/poll?channel=chat:lobby&timeout=0`);
  assert.equal(anonymous.status, 401, 'this server refuses clients without a token');

  const tokenPort = await freePort();
  const withTokenPort = (code) => code.replace(/\b3000\b/g, String(tokenPort));
  const endpoint = node(withTokenPort(snippet('token-endpoint', 'js', server.port)), { env: { HERALD_HMAC_SECRET: secret } });
  const token = await until(async () => {
    try {
      const response = await fetch(`http://127.0.0.1:${tokenPort}/herald-token`);
      return response.ok && (await response.text());
    } catch {
      return null;
    }
  }, `the token endpoint;${endpoint.err}`);
  assert.match(token, /^[\w-]+\.[\w-]+\.[\w-]+$/);
  const claims = JSON.parse(Buffer.from(token.split('.')[1], 'base64url').toString());
  assert.equal(claims.sub, 'alice');
  assert.ok(claims.exp - Date.now() / 1000 > 500, 'valid for about 10 minutes');

  const client = node(withTokenPort(snippet('node-token', 'js', server.port)));
  const withKey = { Authorization: `Bearer ${apiKey}` };
  await subscribers(server, 'chat:lobby', 1, withKey);
  await publish(server.url, 'chat:lobby', { text: 'hi' }, withKey);
  await client.waitFor(/^alice got hi$/m, 'the publication, as alice');
  assert.equal(client.err, '');
  await client.stop();
  await endpoint.stop();
  await stopHerald(server);
});

// ---- the CLI ----

test('CLI: herald subscribe prints what herald publish sent, and --since resumes after the last line', { skip: skipJq }, async () => {
  const server = await herald();
  const cwd = workDir();
  const env = { HERALD_URL: server.url };
  const subscriber = bash(snippet('cli-subscribe', 'sh', server.port), { cwd, env });
  await subscribers(server, 'chat:lobby');
  const publisher = bash(snippet('cli-publish', 'sh', server.port), { cwd, env });
  const reply = JSON.parse(await publisher.finish('herald publish'));
  assert.equal(reply.channel, 'chat:lobby');
  assert.equal(reply.offset, 1);
  await subscriber.waitFor(/"text":"hi"/, 'the publication, printed');
  const [line] = jsonLines(readFileSync(path.join(cwd, 'lobby.ndjson'), 'utf8'));
  assert.deepEqual([line.channel, line.offset, line.epoch, line.data], ['chat:lobby', 1, reply.epoch, { text: 'hi' }]);
  assert.equal(typeof line.cursor, 'string');
  await subscriber.stop();

  await publish(server.url, 'chat:lobby', { text: 'missed' });
  await publish(server.url, 'news', { title: 'missed too' });
  const resumed = bash(snippet('cli-resume', 'sh', server.port), { cwd, env });
  await resumed.waitFor(/missed too/, 'what was missed on both channels');
  assert.deepEqual(
    jsonLines(resumed.out).map(({ channel, offset, data }) => [channel, offset, data]),
    [
      ['chat:lobby', 2, { text: 'missed' }],
      ['news', 1, { title: 'missed too' }],
    ],
  );
  await resumed.stop();
  await stopHerald(server);
});

// ---- curl ----

test('curl: publish', { skip: skipCurl }, async () => {
  const server = await herald();
  const out = await bash(snippet('curl-publish', 'sh', server.port), { cwd: workDir() }).finish('curl publish');
  const reply = JSON.parse(out);
  assert.deepEqual([reply.channel, reply.offset], ['chat:lobby', 1]);
  const history = await (await fetch(`${server.url}/api/channels/chat:lobby/history`)).json();
  assert.deepEqual(history.publications.map((publication) => publication.data), [{ text: 'hi' }]);
  await stopHerald(server);
});

test('curl: the NDJSON stream of two channels', { skip: skipCurl }, async () => {
  const server = await herald();
  const stream = bash(snippet('curl-stream', 'sh', server.port), { cwd: workDir() });
  await stream.waitFor(/^\{"type":"open"/m, 'the opening line');
  await publish(server.url, 'chat:lobby', { text: 'hi' });
  await publish(server.url, 'news', { title: 'extra' });
  await stream.waitFor(/"extra"/, 'both publications');
  const [opening, ...publications] = jsonLines(stream.out);
  assert.deepEqual(opening.subscribed.map((entry) => entry.channel), ['chat:lobby', 'news']);
  assert.deepEqual(
    publications.map(({ channel, offset, data }) => [channel, offset, data]),
    [
      ['chat:lobby', 1, { text: 'hi' }],
      ['news', 1, { title: 'extra' }],
    ],
  );
  assert.ok(publications.every((publication) => typeof publication.cursor === 'string'));
  await stream.stop();
  await stopHerald(server);
});

test('curl: Server-Sent Events', { skip: skipCurl }, async () => {
  const server = await herald();
  const stream = bash(snippet('curl-sse', 'sh', server.port), { cwd: workDir() });
  await stream.waitFor(/^event: cursor$/m, 'the opening event');
  const opening = JSON.parse(/^event: cursor\ndata: (.*)$/m.exec(stream.out)[1]);
  assert.equal(opening.type, 'open');
  assert.deepEqual(opening.subscribed.map((entry) => entry.channel), ['chat:lobby']);
  await publish(server.url, 'chat:lobby', { text: 'hi' });
  await stream.waitFor(/^data: \{"channel"/m, 'the publication event');
  const [, id, data] = /^id: (.*)\ndata: (\{"channel".*)$/m.exec(stream.out);
  const publication = JSON.parse(data);
  assert.deepEqual([publication.channel, publication.offset, publication.data], ['chat:lobby', 1, { text: 'hi' }]);
  assert.notEqual(id, opening.cursor, 'each event carries the cursor after it');
  await stream.stop();
  await stopHerald(server);
});

test('curl: the long-poll loop misses nothing between its requests', { skip: skipCurl }, async () => {
  const server = await herald();
  const loop = bash(snippet('curl-poll', 'sh', server.port), { cwd: workDir() });
  await subscribers(server, 'news');
  for (let n = 1; n <= 5; n += 1) await publish(server.url, 'news', { n });
  await until(
    () => jsonLines(loop.out).flatMap((answer) => answer.messages).length >= 5,
    `five publications polled:\n${loop.out}${loop.err}`,
  );
  const messages = jsonLines(loop.out).flatMap((answer) => answer.messages);
  assert.deepEqual(
    messages.map(({ offset, data }) => [offset, data.n]),
    [1, 2, 3, 4, 5].map((n) => [n, n]),
  );
  await loop.stop();
  await stopHerald(server);
});

test('curl: positions= resumes a channel after a position', { skip: skipJq }, async () => {
  const server = await herald();
  for (const text of ['one', 'two', 'three']) await publish(server.url, 'chat:lobby', { text });
  const stream = bash(snippet('curl-positions', 'sh', server.port), { cwd: workDir() });
  await stream.waitFor(/"three"/, 'the publications after offset 1');
  const [opening, ...publications] = jsonLines(stream.out);
  assert.equal(opening.type, 'open');
  assert.deepEqual(opening.subscribed.map(({ channel, recovered }) => [channel, recovered]), [['chat:lobby', true]]);
  assert.deepEqual(
    publications.map(({ offset, data }) => [offset, data.text]),
    [
      [2, 'two'],
      [3, 'three'],
    ],
  );
  await stream.stop();
  await stopHerald(server);
});

// ---- Python ----

test('Python: websockets follows a channel, urllib publishes, a restart is reported and survived', { skip: skipPython }, async () => {
  const server = await herald();
  const cwd = workDir();
  writeFileSync(path.join(cwd, 'follow.py'), snippet('python-websocket', 'python', server.port));
  writeFileSync(path.join(cwd, 'publish.py'), snippet('python-publish', 'python', server.port));
  // Unbuffered, as in a terminal; websockets' first reconnect delays shortened (its own settings).
  const env = { PYTHONUNBUFFERED: '1', WEBSOCKETS_BACKOFF_INITIAL_DELAY: '0.2', WEBSOCKETS_BACKOFF_MIN_DELAY: '0.2' };
  const follower = start(PYTHON, ['follow.py'], { cwd, env });
  await follower.waitFor(/^subscribed at/m, 'subscribed');
  const reply = await start(PYTHON, ['publish.py'], { cwd, env }).finish('publish.py');
  assert.match(reply, /^\{'channel': 'chat:lobby', 'offset': 1, 'epoch': '[^']+'\}$/m);
  await follower.waitFor(/^chat:lobby 1 \{"text": "hi from Python"\}$/m, 'the publication');

  await server.restart();
  await follower.waitFor(/^publications were lost: reload the state$/m, 'recovered: False after the restart');
  await follower.waitFor(/^subscribed at .*\n(.|\n)*subscribed at/m, 'subscribed again');
  await start(PYTHON, ['publish.py'], { cwd, env }).finish('publish.py, after the restart');
  await follower.waitFor(/^chat:lobby 1 \{"text": "hi from Python"\}\n(.|\n)*^chat:lobby 1 /m, 'a publication after the restart');
  assert.equal(follower.err, '');
  await follower.stop();
  await stopHerald(server);
});
