// What the client's tests against a real server share.

import assert from 'node:assert/strict';
import { MicroError } from '../src/index.js';

/** Resolves with `check()`'s first truthy value (polled), or fails after `ms`. */
export async function waitFor(check, what, ms = 10_000) {
  const until = Date.now() + ms;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > until) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Rejects with a MicroError of `status` (and `id`), its detail matching `detail`. */
export async function refused(promise, status, detail, id) {
  const e = await promise.then(
    (v) => assert.fail(`expected a ${status} MicroError, got ${JSON.stringify(v)}`),
    (e) => e,
  );
  assert.ok(e instanceof MicroError, `a MicroError: ${e}`);
  assert.equal(e.status, status, e.detail);
  if (detail) assert.match(e.detail, detail);
  if (id) assert.equal(e.id, id, e.detail);
  return e;
}
