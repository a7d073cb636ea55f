// Test support: runs the real Herald binary (HERALD_BIN) on a free loopback port with a config
// of the test's, and a TCP proxy in front of it that can cut every connection.
import { spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { createHmac } from 'node:crypto';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

/** The binary under test, or null (the test is skipped, saying so). */
export const heraldBin = process.env.HERALD_BIN || null;
export const skipWithoutHerald = heraldBin ? false : 'HERALD_BIN is not set: build Herald and point HERALD_BIN at it';

const BASE_CONFIG = `
[namespaces.test]
history_size = 1000
presence = true
join_leave = true
client_publish = true
anonymous = true
`;

/**
 * Starts Herald; resolves once it listens. `config` is added to a config with a `test`
 * namespace (history 1000, presence, client publish). `restart()` kills it (SIGKILL) and starts
 * it again on the same port: the memory engine's history is gone, with a new epoch.
 */
export async function startHerald({ config = BASE_CONFIG, port } = {}) {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'herald-js-'));
  const file = path.join(dir, 'herald.toml');
  writeFileSync(file, config);
  const chosen = port ?? (await freePort());
  const server = { port: chosen, url: `http://127.0.0.1:${chosen}`, child: null, log: '' };
  const launch = () =>
    new Promise((resolve, reject) => {
      const child = spawn(heraldBin, ['serve', '--listen', `127.0.0.1:${chosen}`, '--data-dir', dir, '--config', file], {
        stdio: ['ignore', 'pipe', 'pipe'],
        env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? 'warn' },
      });
      server.child = child;
      const timer = setTimeout(() => reject(new Error(`Herald did not start:\n${server.log}`)), 20000);
      const seen = (chunk) => {
        server.log += chunk;
        if (server.log.includes('Herald is listening')) {
          clearTimeout(timer);
          resolve();
        }
      };
      child.stdout.setEncoding('utf8').on('data', seen);
      child.stderr.setEncoding('utf8').on('data', (chunk) => (server.log += chunk));
      child.on('exit', (code) => {
        clearTimeout(timer);
        if (!server.log.includes('Herald is listening')) reject(new Error(`Herald exited (${code}):\n${server.log}`));
      });
    });
  const kill = () =>
    new Promise((resolve) => {
      const child = server.child;
      if (!child || child.exitCode !== null || child.signalCode) return resolve();
      child.once('exit', () => resolve());
      child.kill('SIGKILL');
    });
  server.restart = async () => {
    await kill();
    server.log = '';
    await launch();
  };
  server.stop = async () => {
    await kill();
    rmSync(dir, { recursive: true, force: true });
  };
  await launch();
  return server;
}

/** `POST /api/publish` from a backend (the test servers run in dev mode: no API key). */
export async function publish(url, channel, data, headers = {}) {
  const response = await fetch(`${url}/api/publish`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', ...headers },
    body: JSON.stringify({ channel, data }),
  });
  const body = await response.json();
  if (!response.ok) throw new Error(`publish: ${response.status} ${JSON.stringify(body)}`);
  return body;
}

/** An HS256 client token. */
export function makeToken(secret, claims) {
  const encode = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');
  const head = `${encode({ alg: 'HS256', typ: 'JWT' })}.${encode(claims)}`;
  return `${head}.${createHmac('sha256', secret).update(head).digest('base64url')}`;
}

export function freePort() {
  return new Promise((resolve, reject) => {
    const probe = net.createServer();
    probe.on('error', reject);
    probe.listen(0, '127.0.0.1', () => {
      const { port } = probe.address();
      probe.close(() => resolve(port));
    });
  });
}

/**
 * A TCP proxy on loopback in front of `target`: `cut()` resets every open connection (as a
 * network drop does), `blockWebSockets` refuses WebSocket upgrades, `down` refuses everything.
 */
export async function startProxy(targetPort) {
  const sockets = new Set();
  const proxy = { port: 0, url: '', blockWebSockets: false, down: false, cuts: 0, upgradesRefused: 0 };
  const server = net.createServer((client) => {
    if (proxy.down) return client.resetAndDestroy();
    sockets.add(client);
    let upstream = null;
    client.on('data', (chunk) => {
      if (!upstream) {
        if (proxy.blockWebSockets && /^upgrade:\s*websocket/im.test(chunk.toString('latin1'))) {
          proxy.upgradesRefused += 1;
          return client.resetAndDestroy();
        }
        upstream = net.connect(targetPort, '127.0.0.1');
        sockets.add(upstream);
        upstream.on('data', (data) => client.write(data));
        upstream.on('error', () => client.destroy());
        upstream.on('close', () => {
          sockets.delete(upstream);
          client.destroy();
        });
        upstream.write(chunk); // queued until connected
        return;
      }
      upstream.write(chunk);
    });
    client.on('error', () => upstream?.destroy());
    client.on('close', () => {
      sockets.delete(client);
      upstream?.destroy();
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  proxy.port = server.address().port;
  proxy.url = `http://127.0.0.1:${proxy.port}`;
  proxy.cut = () => {
    proxy.cuts += 1;
    for (const socket of [...sockets]) socket.resetAndDestroy();
    sockets.clear();
  };
  proxy.close = () =>
    new Promise((resolve) => {
      proxy.cut();
      server.close(() => resolve());
    });
  return proxy;
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Waits until `check()` is truthy, polling; fails after `ms` with `what`. */
export async function until(check, what, ms = 15000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(25);
  }
}
