// herald.d.ts and herald.js declare the same API: every export, and every public member of
// the classes, exists in both (tsc checks the types' use; this checks they name real things).
import test from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import * as sdk from '../../herald.js';

const declarations = readFileSync(new URL('../../herald.d.ts', import.meta.url), 'utf8');

/** The members a `export class Name {...}` block of herald.d.ts declares. */
function declaredMembers(name) {
  const block = declarations.match(new RegExp(`export class ${name}\\b[^{]*\\{([\\s\\S]*?)\\n\\}`))[1];
  const members = new Set();
  for (const line of block.split('\n')) {
    const member = line.match(/^ {2}(?:readonly )?([a-zA-Z_]\w*)[<(?:]/);
    if (member && member[1] !== 'constructor') members.add(member[1]);
  }
  return [...members];
}

test('herald.d.ts declares exactly what herald.js exports', () => {
  const declared = [...declarations.matchAll(/^export (?:class|function) (\w+)/gm)].map((m) => m[1]).sort();
  assert.deepEqual(declared, Object.keys(sdk).sort());
});

test('each declared class member exists on the JavaScript class', () => {
  const instances = {
    Herald: new sdk.Herald('http://127.0.0.1:1', { fetch: async () => ({}), WebSocket: class {} }),
    Backoff: new sdk.Backoff(1, 2),
    HeraldError: new sdk.HeraldError('code', 'message', 400),
  };
  instances.Subscription = new sdk.Subscription(instances.Herald, 'c', null);
  for (const [name, instance] of Object.entries(instances)) {
    for (const member of declaredMembers(name)) {
      assert.ok(member in instance, `${name}.${member} is declared in herald.d.ts but herald.js has none`);
    }
  }
  assert.ok(declaredMembers('Herald').includes('subscribe'), 'the parser of herald.d.ts finds members');
});
