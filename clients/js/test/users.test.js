// App users (`micro.users`) against a real Micro server whose mail goes to a test SMTP
// sink. The server, accounts and mail come from the environment
// (services/users/tests/js_client.rs starts the server and the sink and sets them):
//   MICRO_API                                  the API gateway, like http://127.0.0.1:28080
//   MICRO_NAMESPACE                            a namespace whose app users are on
//   MICRO_ADMIN_ID, MICRO_ADMIN_PASSWORD       an admin of that namespace (a manager)
//   MICRO_MAIL_DIR                             where the sink writes each mail as JSON
// Without MICRO_MAIL_DIR the tests are skipped (the database's runner, and
// test/run-local.sh, run every file of test/ without a sink). The tests sign up users with
// addresses of their own and make (and delete) a collection `notes_<tag>`.

import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Micro, MicroError } from '../src/index.js';
import { refused, waitFor } from './support.js';

const VARS = ['MICRO_API', 'MICRO_NAMESPACE', 'MICRO_ADMIN_ID', 'MICRO_ADMIN_PASSWORD', 'MICRO_MAIL_DIR'];
const env = process.env;
const missing = VARS.filter((v) => !env[v]);

if (!env.MICRO_MAIL_DIR) {
  test('app users', { skip: 'MICRO_MAIL_DIR is not set: services/users/tests/js_client.rs runs these with an SMTP sink' }, () => {});
} else if (missing.length > 0) {
  test('the server to test against', () => {
    assert.fail(`${missing.join(', ')} ${missing.length === 1 ? 'is' : 'are'} not set (see the head of test/users.test.js)`);
  });
} else {
  suite();
}


/** The mails to `to` whose subject contains `subject`, oldest first. */
async function mails(to, subject) {
  const names = (await readdir(env.MICRO_MAIL_DIR)).filter((n) => n.endsWith('.json')).sort();
  const out = [];
  for (const n of names) {
    const m = JSON.parse(await readFile(join(env.MICRO_MAIL_DIR, n), 'utf8'));
    if (m.rcpt_tos.includes(to) && (m.headers.subject ?? '').includes(subject)) out.push(m);
  }
  return out;
}

/** The 6-digit code of mail number `count` (from 1) to `to` about `subject`, waiting for it. */
async function mailedCode(to, subject, count = 1) {
  const all = await waitFor(async () => {
    const m = await mails(to, subject);
    return m.length >= count && m;
  }, `mail #${count} to ${to} about "${subject}"`);
  const text = all[count - 1].text ?? '';
  const code = / is (\d{6})\b/.exec(text)?.[1];
  assert.ok(code, `a code in the mail: ${text}`);
  return code;
}


/** The payload of a JWT (not verified). */
const claims = (token) => JSON.parse(Buffer.from(token.split('.')[1], 'base64url').toString());

function suite() {
  const tag = Date.now().toString(36) + Math.random().toString(36).slice(2, 6);
  const email = `zoe.${tag}@example.com`;
  const passwords = ['correct horse battery', 'a second good secret', 'the third one, reset'];
  const COLLECTION = `notes_${tag}`;
  /** Every request the app user's client sent: `METHOD /path`. */
  const seen = [];
  const logged = (url, init) => {
    seen.push(`${init?.method ?? 'GET'} ${new URL(url).pathname}`);
    return fetch(url, init);
  };
  const client = (options = {}) => new Micro({ url: env.MICRO_API, namespace: env.MICRO_NAMESPACE, ...options });
  const admin = client();
  const app = client({ fetch: logged });
  const anon = client();
  const since = (mark) => seen.slice(mark);
  let uid = '';

  before(async () => {
    await admin.auth.login(env.MICRO_ADMIN_ID, env.MICRO_ADMIN_PASSWORD);
  });

  after(async () => {
    await admin.collections.delete(COLLECTION).catch(() => {});
  });

  describe('app users', () => {
    test('managers read and save the settings; others may not', async () => {
      const s = await admin.users.settings();
      assert.equal(s.signups, true);
      assert.equal(typeof s.attempts_per_minute, 'number');
      // A password sign-in before the address is confirmed is allowed here (see below).
      const want = { ...s, app_name: 'JS Shop', verify_before_login: false };
      assert.deepEqual(await admin.users.saveSettings(want), want);
      assert.deepEqual(await admin.users.settings(), want);
      await refused(admin.users.saveSettings({ ...s, link_url: 'javascript:alert(1)' }), 400, /link_url/, 'users');
      await refused(anon.users.settings(), 401);
    });

    test('signup mails a code and does not sign in', async () => {
      const r = await app.users.signup({ email: email.toUpperCase(), password: passwords[0], name: 'Zoe', data: { plan: 'free' } });
      assert.match(r.message, /code/);
      assert.deepEqual([app.auth.token, app.auth.kind, app.auth.user], ['', '', null]);
    });

    test('verify with the mailed code signs the app user in, verified', async () => {
      const code = await mailedCode(email, 'Confirm your email for JS Shop');
      const kinds = [];
      const off = app.auth.onChange((s) => kinds.push(s.kind));
      await refused(app.users.verify(email, code, { password: 'not the one chosen' }), 400, /not the password/, 'users');
      const s = await app.users.verify(email, code, { password: passwords[0] });
      off();
      assert.deepEqual(kinds, ['user']);
      assert.equal(s.kind, 'user');
      assert.equal(s.user.email, email, 'the address lowercased');
      assert.equal(s.user.verified, true);
      assert.equal(s.user.name, 'Zoe');
      uid = s.user.id;
      assert.equal(app.auth.kind, 'user');
      assert.equal(app.auth.user.id, uid);
      assert.equal(app.auth.account, app.auth.user);
      assert.ok(app.auth.token && app.auth.refreshToken && app.auth.isValid);
      assert.ok(app.auth.expiry > Date.now() / 1000);
      const c = claims(app.auth.token);
      assert.deepEqual([c.sub, c.typ, c.ns, c.verified], [uid, 'app', env.MICRO_NAMESPACE, true]);
      assert.match(app.users.sessionId, /^[a-z0-9]{16}$/);
      await refused(app.users.verify(email, code), 400, /invalid or expired code/, 'users');
    });

    test('bad input is a MicroError with status 400', async () => {
      const e = await refused(anon.users.signup({ email: 'zoe', password: passwords[0] }), 400, /not an email address/, 'users');
      assert.equal(e.transient, false);
      assert.equal(e.statusText, 'Bad Request');
      await refused(anon.users.signup({ email: `yan.${tag}@example.com`, password: 'short' }), 400, /too short/);
      await refused(anon.users.verify(email, '12x'), 400, /6 digits/);
      await refused(app.users.update({ data: { big: 'x'.repeat(20_000) } }), 400, /larger than/);
      await refused(app.users.endSession('not a session'), 400, /invalid session id/);
      await refused(app.users.endSession('a'.repeat(16)), 404, /no session/);
      assert.equal(app.auth.user.id, uid, 'still signed in');
    });

    test('me and update', async () => {
      const me = await app.users.me();
      assert.deepEqual([me.id, me.email, me.verified, me.data], [uid, email, true, { plan: 'free' }]);
      const u = await app.users.update({ name: 'Zoe Q', data: { plan: 'gold' } });
      assert.deepEqual([u.name, u.data], ['Zoe Q', { plan: 'gold' }]);
      assert.equal(app.auth.user.name, 'Zoe Q', 'the session holds the user as changed');
      const again = await app.users.update({ name: 'Zoe' });
      assert.deepEqual([again.name, again.data], ['Zoe', { plan: 'gold' }], 'what is not given stays');
    });

    test('the database sees the app user: a record of theirs under owner = @request.auth.id', async () => {
      await admin.collections.save({
        name: COLLECTION,
        rules: {
          list: 'owner = @request.auth.id',
          view: 'owner = @request.auth.id',
          create: '@request.auth.verified = true && owner = @request.auth.id',
        },
      });
      const notes = app.collection(COLLECTION);
      const rec = await notes.create({ owner: uid, text: 'mine' });
      assert.deepEqual([rec.owner, rec.text, rec.version], [uid, 'mine', 1]);
      await refused(notes.create({ owner: 'somebodyelse123', text: 'theirs' }), 403);
      const page = await notes.list();
      assert.deepEqual(page.items.map((r) => r.id), [rec.id]);
      assert.equal((await notes.getOne(rec.id)).text, 'mine');
      // Another app user sees none of it.
      const yan = client();
      await yan.users.signup({ email: `yan.${tag}@example.com`, password: passwords[0] });
      await yan.users.login(`yan.${tag}@example.com`, passwords[0]);
      assert.equal(yan.auth.user.verified, false);
      assert.deepEqual((await yan.collection(COLLECTION).list()).items, []);
      await refused(yan.collection(COLLECTION).create({ owner: yan.auth.user.id }), 403);
      await yan.users.logout();
      // Where the settings ask for a confirmed address first, yan cannot sign in yet.
      const s = await admin.users.settings();
      await admin.users.saveSettings({ ...s, verify_before_login: true });
      try {
        await refused(yan.users.login(`yan.${tag}@example.com`, passwords[0]), 400, /confirm your email address first/, 'users');
        assert.equal(yan.auth.kind, '');
      } finally {
        await admin.users.saveSettings(s);
      }
    });

    test('the access token is refreshed through /users/v1/refresh: forced, and before it expires', async () => {
      let mark = seen.length;
      const before = app.auth.refreshToken;
      const s = await app.auth.refresh();
      assert.deepEqual(since(mark), ['POST /users/v1/refresh']);
      assert.equal(s.kind, 'user');
      assert.notEqual(app.auth.refreshToken, before);
      assert.equal(app.auth.user.id, uid);
      // A token within the margin of its expiry (here: every one) is refreshed first.
      mark = seen.length;
      app.refreshMargin = 24 * 3600;
      try {
        assert.equal((await app.collection(COLLECTION).list()).items.length, 1);
      } finally {
        app.refreshMargin = 60;
      }
      assert.deepEqual(since(mark), ['POST /users/v1/refresh', `GET /db/v1/${COLLECTION}/records`]);
    });

    test('ending another session voids the access token: the client refreshes and goes on', async () => {
      const other = client();
      await other.users.login(email, passwords[0]);
      const otherId = other.users.sessionId;
      assert.notEqual(otherId, app.users.sessionId);
      const ids = (await app.users.sessions()).map((s) => s.id);
      assert.ok(ids.includes(otherId) && ids.includes(app.users.sessionId), JSON.stringify(ids));
      const mark = seen.length;
      await app.users.endSession(otherId);
      assert.equal(app.auth.kind, 'user', 'another session ended: this one goes on');
      // The next request meets a 401 (the voided token), refreshes and is sent again.
      await waitFor(async () => {
        assert.equal((await app.collection(COLLECTION).list()).items.length, 1);
        return since(mark).includes('POST /users/v1/refresh');
      }, 'a refresh after the revocation');
      const log = since(mark);
      const at = log.indexOf('POST /users/v1/refresh');
      assert.deepEqual(log.slice(at - 1, at + 2), [`GET /db/v1/${COLLECTION}/records`, 'POST /users/v1/refresh', `GET /db/v1/${COLLECTION}/records`]);
      // The ended session's client cannot refresh: it is signed out.
      await waitFor(async () => {
        const e = await other.users.me().then(() => null, (e) => e);
        return e && e.status === 401;
      }, 'the ended session to be refused');
      assert.deepEqual([other.auth.token, other.auth.kind], ['', '']);
      const now = (await app.users.sessions()).map((s) => s.id);
      assert.ok(!now.includes(otherId) && now.includes(app.users.sessionId), JSON.stringify(now));
    });

    test('export: everything kept about the user', async () => {
      const ex = await app.users.export();
      assert.equal(ex.user.id, uid);
      assert.ok(ex.sessions.some((s) => s.id === app.users.sessionId));
      assert.ok(!JSON.stringify(ex).includes('argon2'));
    });

    test('managers list and get app users; app users may not', async () => {
      const page = await admin.users.list({ page: 1, perPage: 100 });
      assert.deepEqual([page.page, page.perPage], [1, 100]);
      assert.ok(page.items.some((u) => u.id === uid && u.email === email));
      assert.equal((await admin.users.get(uid)).email, email);
      await refused(app.users.list(), 403);
      await refused(app.users.saveSettings({}), 403);
    });

    test('a wrong password is refused without a refresh; a change starts a new session', async () => {
      let mark = seen.length;
      await refused(app.users.changePassword('not my password', passwords[1]), 403, /wrong/, 'users');
      assert.deepEqual(since(mark), ['POST /users/v1/me/password'], 'no refresh for a wrong password');
      assert.equal(app.auth.kind, 'user');
      const old = { refreshToken: app.auth.refreshToken, session: app.users.sessionId };
      mark = seen.length;
      const s = await app.users.changePassword(passwords[0], passwords[1]);
      assert.equal(s.kind, 'user');
      assert.notEqual(app.users.sessionId, old.session);
      // The old session ended with the change.
      const stale = client();
      stale.auth.set({ token: '', refreshToken: old.refreshToken, kind: 'user' });
      await refused(stale.auth.refresh(), 401);
      assert.equal((await app.users.me()).id, uid);
      await refused(anon.users.login(email, passwords[0]), 401, /wrong email or password/);
    });

    test('logout ends the session on the server and forgets it', async () => {
      const refreshToken = app.auth.refreshToken;
      const mark = seen.length;
      await app.users.logout();
      assert.deepEqual(since(mark), ['POST /users/v1/logout']);
      assert.deepEqual([app.auth.token, app.auth.refreshToken, app.auth.kind, app.auth.user], ['', '', '', null]);
      const stale = client();
      stale.auth.set({ token: '', refreshToken, kind: 'user' });
      await refused(stale.auth.refresh(), 401);
      await refused(app.users.me(), 401);
    });

    test('a mailed sign-in code; a reset of a forgotten password', async () => {
      const r = await anon.users.requestCode(email);
      assert.match(r.message, /code/);
      const c2 = client();
      const s = await c2.users.loginWithCode(email, await mailedCode(email, 'Your JS Shop sign-in code'));
      assert.deepEqual([s.kind, s.user.id], ['user', uid]);
      assert.equal((await anon.users.requestReset(`nobody.${tag}@example.com`)).message, (await anon.users.requestReset(email)).message);
      const code = await mailedCode(email, 'Reset your JS Shop password');
      await refused(app.users.reset(email, code, '12345678'), 400, /too common/);
      const s3 = await app.users.reset(email, code, passwords[2]);
      assert.deepEqual([s3.kind, s3.user.id, app.auth.kind], ['user', uid, 'user']);
      // The reset ended every other session: c2's client is signed out at its next call.
      await waitFor(async () => (await c2.users.me().then(() => null, (e) => e))?.status === 401, "c2's session to end");
      assert.equal(c2.auth.kind, '');
      assert.equal((await app.users.me()).id, uid);
    });

    test('deleteMe erases the user; the client is signed out', async () => {
      await refused(app.users.deleteMe('not my password'), 403, /wrong/, 'users');
      assert.equal(app.auth.kind, 'user');
      await app.users.deleteMe(passwords[2]);
      assert.deepEqual([app.auth.token, app.auth.kind], ['', '']);
      await refused(admin.users.get(uid), 404, /no user/);
      await refused(anon.users.login(email, passwords[2]), 401);
    });

    test('the app user never refreshed through /auth/token', () => {
      assert.ok(seen.includes('POST /users/v1/refresh'));
      assert.deepEqual(seen.filter((s) => s.includes('/auth/')), []);
    });
  });
}
