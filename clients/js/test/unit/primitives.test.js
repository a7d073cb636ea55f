// The SDK's small pure parts: backoff, token expiry and renewal timing, what an error means.
import test from 'node:test';
import assert from 'node:assert/strict';
import { Backoff, HeraldError, outcomeOf, renewalDelay, tokenExpiry } from '../../herald.js';
import { jwt } from './fakes.js';

test('backoff doubles its bound up to max, with full jitter below it', () => {
  const top = new Backoff(100, 1000, () => 0.999999);
  assert.deepEqual(
    Array.from({ length: 6 }, () => top.next()),
    [99, 199, 399, 799, 999, 999],
  );
  const bottom = new Backoff(100, 1000, () => 0);
  assert.equal(bottom.next(), 0, 'full jitter reaches zero');
  const random = new Backoff(100, 1000);
  for (let i = 0; i < 200; i++) {
    const delay = random.next();
    assert.ok(delay >= 0 && delay < 1000, `delay ${delay} within [0, max)`);
  }
});

test('backoff reset starts again from the smallest bound; a huge attempt count does not overflow', () => {
  const backoff = new Backoff(100, 5000, () => 0.5);
  for (let i = 0; i < 100; i++) backoff.next();
  assert.equal(backoff.next(), 2500);
  backoff.reset();
  assert.equal(backoff.next(), 50);
  assert.equal(new Backoff(100, 50).max, 100, 'max is never below min');
});

test('tokenExpiry reads exp from a JWT and gives null for anything else', () => {
  assert.equal(tokenExpiry(jwt({ sub: 'ann', exp: 1767225600 })), 1767225600);
  assert.equal(tokenExpiry(jwt({ sub: 'ann' })), null);
  assert.equal(tokenExpiry(jwt({ exp: 'soon' })), null);
  assert.equal(tokenExpiry('not a token'), null);
  assert.equal(tokenExpiry(''), null);
  // base64url with characters that differ from base64 ('-' and '_') and no padding
  const claims = { sub: '??>>??', exp: 42 };
  assert.match(jwt(claims).split('.')[1], /[-_]/);
  assert.equal(tokenExpiry(jwt(claims)), 42);
});

test('renewalDelay renews at 85% of the life, at least 3 s before the end, never negative', () => {
  assert.equal(renewalDelay(60_000), 51_000);
  assert.equal(renewalDelay(10_000), 7_000);
  assert.equal(renewalDelay(4_000), 1_000);
  assert.equal(renewalDelay(2_000), 0);
  assert.equal(renewalDelay(-5_000), 0);
});

test('outcomeOf tells token expiry and refusal apart from passing trouble', () => {
  assert.equal(outcomeOf(new HeraldError('token_expired', 'x', 401)).tokenExpired, true);
  assert.equal(outcomeOf(new HeraldError('invalid_token', 'x', 401)).badToken, true);
  assert.equal(outcomeOf(new HeraldError('unauthorized', 'x')).badToken, true);
  const passing = outcomeOf(new HeraldError('engine_unavailable', 'x', 503));
  assert.equal(passing.tokenExpired, undefined);
  assert.equal(passing.badToken, undefined);
  assert.equal(passing.error.code, 'engine_unavailable');
});

test('an option given as undefined takes its default', async () => {
  const { Herald } = await import('../../herald.js');
  const herald = new Herald('http://127.0.0.1:9', { transports: undefined, maxReconnectDelay: undefined });
  assert.equal(herald.state, 'disconnected');
  assert.throws(() => new Herald('http://127.0.0.1:9', { transports: [] }), /non-empty list/);
});
