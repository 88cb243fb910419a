// Mailing lists (`micro.lists`) against a real Micro server: a visitor's subscription.
// The server and an admin of the namespace come from the environment (the database's
// runner, services/db/tests/js_client.rs, and test/run-local.sh set them):
//   MICRO_API, MICRO_NAMESPACE, MICRO_ADMIN_ID, MICRO_ADMIN_PASSWORD
// The admin makes a list of its own (`js-<run>`) and deletes it at the end.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Micro, MicroError } from '../src/index.js';

const VARS = ['MICRO_API', 'MICRO_NAMESPACE', 'MICRO_ADMIN_ID', 'MICRO_ADMIN_PASSWORD'];
const env = process.env;
const missing = VARS.filter((v) => !env[v]);

if (missing.length > 0) {
  test('the server to test against', () => {
    assert.fail(`${missing.join(', ')} ${missing.length === 1 ? 'is' : 'are'} not set (see the head of test/lists.test.js)`);
  });
} else {
  suite();
}

function suite() {
  const list = `js-${Date.now().toString(36)}`;
  const admin = new Micro({ url: env.MICRO_API, namespace: env.MICRO_NAMESPACE });
  const visitor = new Micro({ url: env.MICRO_API, namespace: env.MICRO_NAMESPACE });

  before(async () => {
    await admin.auth.login(env.MICRO_ADMIN_ID, env.MICRO_ADMIN_PASSWORD);
    await admin.send('/subscribe/lists/save', { method: 'POST', body: { name: list, title: 'JS News' } });
  });

  after(async () => {
    await admin.send('/subscribe/lists/delete', { method: 'POST', body: { name: list } });
  });

  test('a visitor subscribes without signing in; the address waits for its confirmation', async () => {
    const message = await visitor.lists.subscribe(list, { email: 'Zoe@Example.com', name: 'Zoe' });
    assert.match(message, /Check your email/);
    // Again: the same answer.
    assert.equal(await visitor.lists.subscribe(list, { email: 'zoe@example.com' }), message);
    const reply = await admin.send('/subscribe/subscribers/list', { method: 'POST', body: { list } });
    assert.deepEqual(
      reply.subscribers.map((s) => [s.email, s.name, s.state]),
      [['zoe@example.com', 'Zoe', 'pending']],
    );
  });

  test('bad subscriptions are refused in words', async () => {
    for (const [l, who, status, detail] of [
      [list, { email: 'not an address' }, 400, /not an email address/],
      ['no-such-list', { email: 'zoe@example.com' }, 404, /no list/],
    ]) {
      const e = await visitor.lists.subscribe(l, who).then(
        (v) => assert.fail(`expected ${status}, got ${v}`),
        (e) => e,
      );
      assert.ok(e instanceof MicroError, String(e));
      assert.equal(e.status, status, e.detail);
      assert.match(e.detail, detail);
    }
    await assert.rejects(visitor.lists.subscribe(list, /** @type {any} */ ({})), TypeError);
    await assert.rejects(new Micro({ url: env.MICRO_API }).lists.subscribe(list, { email: 'a@b.co' }), TypeError);
  });
}
