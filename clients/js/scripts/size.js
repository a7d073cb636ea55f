// How many bytes herald.js costs a page: as served, minified (terser) and gzipped.
//   npm run size            # prints the figures
//   npm run size -- --json  # the same, as JSON
import { readFileSync } from 'node:fs';
import { gzipSync } from 'node:zlib';
import { minify } from 'terser';

const source = readFileSync(new URL('../herald.js', import.meta.url), 'utf8');
const minified = (await minify(source, { module: true, compress: { passes: 2 }, mangle: true })).code;
const figures = {
  raw: Buffer.byteLength(source),
  rawGzip: gzipSync(source, { level: 9 }).length,
  minified: Buffer.byteLength(minified),
  minifiedGzip: gzipSync(minified, { level: 9 }).length,
};
if (process.argv.includes('--json')) {
  console.log(JSON.stringify(figures));
} else {
  const kib = (bytes) => `${(bytes / 1024).toFixed(1)} KiB`;
  console.log(`herald.js: ${kib(figures.raw)} as served (${kib(figures.rawGzip)} gzipped), ${kib(figures.minified)} minified (${kib(figures.minifiedGzip)} gzipped)`);
}
