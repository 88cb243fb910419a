// Push notifications (`micro.push`) against a real Micro server and a real push service.
// The server, accounts and the push service come from the environment
// (services/push/tests/js_client.rs starts them and sets these):
//   MICRO_API                                  the API gateway, like http://127.0.0.1:28080
//   MICRO_NAMESPACE                            a namespace whose app users are on
//   MICRO_ADMIN_ID, MICRO_ADMIN_PASSWORD       an admin of that namespace
//   MICRO_LAX_APP_USERS                        set when its app users sign in unconfirmed
//   MICRO_PUSH_SUBSCRIPTION                    a browser's PushSubscription JSON whose
//                                              push service is the test's own
//   MICRO_PUSH_RECEIVED                        where that push service lists what it got
//                                              (decrypted with the browser's keys)
// Without MICRO_PUSH_SUBSCRIPTION the tests are skipped (test/run-local.sh runs every
// file of test/ without a push service).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Micro } from '../src/index.js';
import { refused, waitFor } from './support.js';

const VARS = [
  'MICRO_API',
  'MICRO_NAMESPACE',
  'MICRO_ADMIN_ID',
  'MICRO_ADMIN_PASSWORD',
  'MICRO_LAX_APP_USERS',
  'MICRO_PUSH_SUBSCRIPTION',
  'MICRO_PUSH_RECEIVED',
];
const env = process.env;
const missing = VARS.filter((v) => !env[v]);

if (!env.MICRO_PUSH_SUBSCRIPTION) {
  test('push', { skip: 'MICRO_PUSH_SUBSCRIPTION is not set: services/push/tests/js_client.rs runs these' }, () => {});
} else if (missing.length > 0) {
  test('the server to test against', () => {
    assert.fail(`${missing.join(', ')} ${missing.length === 1 ? 'is' : 'are'} not set (see the head of test/push.test.js)`);
  });
} else {
  suite();
}



function suite() {
  const tag = Date.now().toString(36) + Math.random().toString(36).slice(2, 6);
  const client = () => new Micro({ url: env.MICRO_API, namespace: env.MICRO_NAMESPACE });
  const admin = client();
  const app = client();
  const browser = JSON.parse(env.MICRO_PUSH_SUBSCRIPTION);
  let uid = '';
  /** @type {import('../src/index.js').PushListener | undefined} */
  let listener;
  const heard = [];

  before(async () => {
    await admin.auth.login(env.MICRO_ADMIN_ID, env.MICRO_ADMIN_PASSWORD);
    const email = `zoe.${tag}@example.com`;
    await app.users.signup({ email, password: "zoe's long password" });
    uid = (await app.users.login(email, "zoe's long password")).user.id;
  });

  after(() => listener?.close());

  test('the namespace key is a P-256 public key, for its signed-in accounts', async () => {
    const key = await app.push.publicKey();
    assert.equal(key.length, 87);
    assert.equal(await admin.push.publicKey(), key);
    await refused(client().push.publicKey(), 401);
  });

  test('a browser subscribes for its user, with topics; the keys stay with the server', async () => {
    const sub = await app.push.subscribe(browser, { topics: ['news'] });
    assert.deepEqual(sub.topics, ['news']);
    assert.equal(sub.endpoint, new URL(browser.endpoint).origin);
    assert.equal(sub.keys, undefined);
    const mine = await app.push.subscriptions();
    assert.deepEqual(
      mine.map((s) => s.id),
      [sub.id],
    );
  });

  test('a user online hears a notification at once; the browser gets it encrypted; receipts count', async () => {
    listener = app.push.listen((n) => heard.push(n));
    await listener.ready;
    const report = await admin.push.send({ user: uid, title: `Hello ${tag}`, body: 'b', url: '/inbox', data: { n: 1 } });
    assert.equal(report.accepted, 1, JSON.stringify(report));
    const n = await waitFor(() => heard.find((h) => h.id === report.id), 'the realtime notification');
    const { receipt, ...rest } = n;
    assert.deepEqual(rest, { id: report.id, title: `Hello ${tag}`, body: 'b', url: '/inbox', data: { n: 1 } });
    assert.equal(typeof receipt, 'string');
    const got = await waitFor(async () => {
      const all = await (await fetch(env.MICRO_PUSH_RECEIVED)).json();
      return all.find((r) => r.message?.id === report.id);
    }, 'the push service to get it');
    assert.equal(got.error, undefined, got.error);
    assert.equal(got.message.title, `Hello ${tag}`);
    await app.push.receipt(n, 'clicked');
    await app.push.receipt(n, 'clicked');
    await refused(app.push.receipt({ id: report.id, receipt: 'forged' }, 'clicked'), 404);
    await assert.rejects(app.push.receipt(/** @type {any} */ (report.id), 'clicked'), TypeError);
    const r = await waitFor(async () => {
      const m = await admin.push.message(report.id);
      return m.receipts.delivered === 1 && m.receipts.clicked === 1 && m;
    }, 'the receipts');
    assert.equal(r.target, `user:${uid}`);
    const latest = await admin.push.messages({ limit: 1 });
    assert.equal(latest[0].id, report.id);
  });

  test('a topic reaches its followers', async () => {
    const report = await admin.push.send({ topic: 'news', title: 'Issue 1' });
    assert.equal(report.subscriptions, 1);
    await waitFor(() => heard.find((h) => h.id === report.id), 'the topic notification');
  });

  test('bad calls are refused in words', async () => {
    await refused(app.push.send({ all: true, title: 'spam' }), 403);
    await refused(app.push.subscribe({ ...browser, keys: { p256dh: 'AAAA', auth: browser.keys.auth } }), 400, /p256dh/);
    await refused(admin.push.send({ title: 'to nobody' }), 400, /user .*topic.*all/);
    await refused(admin.push.send({ all: true, title: 't', data: 'x'.repeat(5000) }), 400, /fit a push message/);
    await assert.rejects(app.push.subscribe(/** @type {any} */ ({})), TypeError);
    await assert.rejects(app.push.unsubscribe(/** @type {any} */ ({})), TypeError);
    assert.throws(() => app.push.listen(/** @type {any} */ (null)), TypeError);
  });

  test('unsubscribing and closing end it', async () => {
    const [sub] = await app.push.subscriptions();
    await app.push.unsubscribe(sub);
    assert.deepEqual(await app.push.subscriptions(), []);
    await refused(app.push.unsubscribe(sub.id), 404);
    listener?.close();
    assert.equal(listener?.closed, true);
  });
}
