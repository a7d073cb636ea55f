// The npm package as a user gets it: `npm pack`, installed into an empty project, imported by
// name from Node, its types found by TypeScript. No registry is asked: the package has no
// dependencies.
import test from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync, readdirSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const packageDir = path.resolve(import.meta.dirname, '..', '..');
const tsc = path.join(packageDir, 'node_modules', 'typescript', 'bin', 'tsc');

test('the packed package installs, imports by name and carries its types', () => {
  const work = mkdtempSync(path.join(os.tmpdir(), 'herald-pack-'));
  const tarball = execFileSync('npm', ['pack', '--silent', '--pack-destination', work], { cwd: packageDir, encoding: 'utf8' }).trim();
  const project = path.join(work, 'app');
  execFileSync('mkdir', ['-p', project]);
  writeFileSync(path.join(project, 'package.json'), JSON.stringify({ name: 'app', private: true, type: 'module' }));
  execFileSync('npm', ['install', '--silent', '--offline', '--no-audit', '--no-fund', path.join(work, tarball)], { cwd: project });
  const installed = readdirSync(path.join(project, 'node_modules', 'herald-client')).sort();
  assert.deepEqual(installed, ['README.md', 'herald.d.ts', 'herald.js', 'package.json']);

  writeFileSync(
    path.join(project, 'main.js'),
    "import { Herald, HeraldError } from 'herald-client';\n" +
      "const herald = new Herald('http://127.0.0.1:1');\n" +
      "console.log(JSON.stringify({ state: herald.state, error: new HeraldError('x', 'y') instanceof Error }));\n",
  );
  const output = JSON.parse(execFileSync('node', ['main.js'], { cwd: project, encoding: 'utf8' }));
  assert.deepEqual(output, { state: 'disconnected', error: true });

  writeFileSync(
    path.join(project, 'main.ts'),
    "import { Herald, type Publication } from 'herald-client';\n" +
      "const herald = new Herald('http://127.0.0.1:1', { transports: ['sse'] });\n" +
      "herald.subscribe('news').on('publication', (p: Publication) => p.offset.toFixed());\n",
  );
  writeFileSync(
    path.join(project, 'tsconfig.json'),
    JSON.stringify({ compilerOptions: { module: 'nodenext', moduleResolution: 'nodenext', target: 'es2022', strict: true, noEmit: true, types: [] }, files: ['main.ts'] }),
  );
  execFileSync('node', [tsc, '-p', 'tsconfig.json'], { cwd: project, encoding: 'utf8' });
});
