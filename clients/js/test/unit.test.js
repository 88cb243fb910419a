// Tests of the client without a server: the event-stream parser, the filter helper,
// errors, token refresh, app users' sessions and the subscription's reconnection (with a
// fake fetch).

import { test, describe } from 'node:test';
import assert from 'node:assert/strict';
import { Micro, MicroError, filter, formatDate, readEventStream } from '../src/index.js';

const enc = new TextEncoder();

/** A body of these chunks (strings or bytes). */
function body(chunks) {
  return new ReadableStream({
    start(c) {
      for (const ch of chunks) c.enqueue(typeof ch === 'string' ? enc.encode(ch) : ch);
      c.close();
    },
  });
}

async function events(chunks) {
  const out = [];
  for await (const ev of readEventStream(body(chunks))) out.push(ev);
  return out;
}

describe('readEventStream', () => {
  const text =
    'data: {"action":"subscribed","cursor":1}\n\n' +
    ': keep-alive\n' +
    'event: error\r\ndata: {"code":400}\r\n\r\n' +
    'data: line1\rdata:line2\r\rid: 7\nretry: 1500\ndata: é😀\n\n' +
    'data: unfinished';
  const want = [
    { event: 'message', data: '{"action":"subscribed","cursor":1}', id: '' },
    { event: 'error', data: '{"code":400}', id: '' },
    { event: 'message', data: 'line1\nline2', id: '' },
    { event: 'message', data: 'é😀', id: '7', retry: 1500 },
  ];

  test('reads events, comments, CRLF and CR line ends, multi-line data', async () => {
    assert.deepEqual(await events([text]), want);
  });

  test('gives the same events however the bytes are split', async () => {
    const bytes = enc.encode(text);
    for (let i = 1; i < bytes.length; i++) {
      assert.deepEqual(await events([bytes.slice(0, i), bytes.slice(i)]), want, `split at ${i}`);
    }
    assert.deepEqual(await events([...bytes].map((b) => new Uint8Array([b]))), want, 'byte by byte');
  });

  test('ignores a BOM and dispatches nothing for empty events', async () => {
    assert.deepEqual(await events(['\uFEFFdata: a\n\nevent: x\n\n\n']), [{ event: 'message', data: 'a', id: '' }]);
  });
});

describe('filter', () => {
  test('quotes strings with the escapes the language reads', () => {
    assert.equal(filter('title = {:t}', { t: "x' || 1=1 || 'y" }), "title = 'x\\' || 1=1 || \\'y'");
    assert.equal(filter('a = {:a}', { a: 'back\\slash "dq"\nnl' }), "a = 'back\\\\slash \"dq\"\nnl'");
    assert.equal(filter('a = {:a}', { a: '\\' }), "a = '\\\\'");
  });

  test('numbers without exponents, booleans, null, dates, JSON', () => {
    assert.equal(filter('{:a} {:b} {:c} {:d} {:e}', { a: 1, b: -2.5, c: 1e21, d: 1.5e-7, e: -0 }), '1 -2.5 1000000000000000000000 0.00000015 0');
    assert.equal(filter('{:a} {:b} {:c} {:d}', { a: true, b: false, c: null, d: 12n }), 'true false null 12');
    assert.equal(filter('d < {:d}', { d: new Date(Date.UTC(2026, 11, 6, 1, 2, 3, 4)) }), "d < '2026-12-06 01:02:03.004Z'");
    assert.equal(filter('t ?= {:t}', { t: ['a'] }), `t ?= '["a"]'`);
  });

  test('puts values in once: a value holding a placeholder stays as it is', () => {
    assert.equal(filter('a = {:a} && b = {:b}', { a: '{:b}', b: 'x' }), "a = '{:b}' && b = 'x'");
  });

  test('refuses what has no literal', () => {
    assert.throws(() => filter('a = {:a}', {}), /no value for \{:a\}/);
    assert.throws(() => filter('a = {:a}', { a: undefined }), /no value/);
    assert.throws(() => filter('a = {:a}', { a: NaN }), /finite/);
    assert.throws(() => filter('a = {:a}', { a: Infinity }), /finite/);
    assert.throws(() => filter('a = {:a}', { a: new Date('nope') }), /valid Date/);
    assert.throws(() => filter('a = {:a}', { a: () => 1 }), /no filter literal/);
  });

  test('formatDate writes the server time format', () => {
    assert.equal(formatDate(new Date(0)), '1970-01-01 00:00:00.000Z');
  });
});

describe('MicroError', () => {
  test('carries the error body and the position of a filter error', async () => {
    const m = new Micro({
      url: 'http://x',
      fetch: async () =>
        new Response('{"id":"db","code":400,"detail":"filter at 6: expected a value, found end of filter","status":"Bad Request"}', {
          status: 400,
        }),
    });
    const e = await m.collection('t').list({ filter: 'a = ' }).catch((e) => e);
    assert.ok(e instanceof MicroError);
    assert.equal(e.status, 400);
    assert.equal(e.code, 400);
    assert.equal(e.id, 'db');
    assert.equal(e.position, 6);
    assert.equal(e.statusText, 'Bad Request');
    assert.equal(e.transient, false);
  });

  test('an unreachable server is status 0, transient', async () => {
    const m = new Micro({ url: 'http://x', fetch: async () => { throw new TypeError('fetch failed'); } });
    const e = await m.collection('t').getOne('a').catch((e) => e);
    assert.ok(e instanceof MicroError);
    assert.equal(e.status, 0);
    assert.equal(e.transient, true);
  });

  test('a body that is not JSON', async () => {
    const m = new Micro({ url: 'http://x', fetch: async () => new Response('bad gateway', { status: 502, statusText: 'Bad Gateway' }) });
    const e = await m.collections.list().catch((e) => e);
    assert.equal(e.status, 502);
    assert.equal(e.detail, 'bad gateway');
  });

  test('an abort rejects with the AbortError', async () => {
    const m = new Micro({
      url: 'http://x',
      fetch: (url, init) =>
        new Promise((_, reject) => {
          if (init.signal.aborted) reject(init.signal.reason);
          init.signal.addEventListener('abort', () => reject(init.signal.reason));
        }),
    });
    const ac = new AbortController();
    const p = m.collection('t').list({ signal: ac.signal });
    ac.abort();
    await assert.rejects(p, { name: 'AbortError' });
  });
});

/** A fake gateway: `handle(url, init)` answers each call; calls are recorded. */
function fake(handle) {
  const calls = [];
  const f = async (url, init) => {
    const u = new URL(url);
    const call = { url: u, init, body: init.body ? JSON.parse(init.body) : undefined };
    calls.push(call);
    return handle(call, calls.length);
  };
  return { calls, fetch: f };
}

const json = (v, status = 200) => new Response(JSON.stringify(v), { status, headers: { 'content-type': 'application/json' } });

describe('auth', () => {
  test('login sends id and secret with the namespace; requests carry the token', async () => {
    const now = Math.floor(Date.now() / 1000);
    const { calls, fetch } = fake((c) =>
      c.url.pathname === '/auth/token'
        ? json({ access_token: 'A', refresh_token: 'R', expiry: String(now + 900), account: { id: 'alice' } })
        : json({ items: [], page: 1, per_page: 30 }),
    );
    const m = new Micro({ url: 'http://x/', namespace: 'shop', fetch });
    const s = await m.auth.login('alice', 'pw');
    assert.deepEqual(s, { token: 'A', refreshToken: 'R', expiry: now + 900, account: { id: 'alice' }, kind: 'account' });
    assert.equal(m.auth.kind, 'account');
    assert.equal(m.auth.user, null);
    assert.deepEqual(calls[0].body, { id: 'alice', secret: 'pw' });
    assert.equal(calls[0].init.headers['Micro-Namespace'], 'shop');
    assert.equal(calls[0].init.headers.Authorization, undefined);
    const page = await m.collection('todos').list({ perPage: 5, sort: ['-created', 'title'], total: true });
    assert.deepEqual(page, { items: [], page: 1, perPage: 30 });
    assert.equal(calls[1].url.href, 'http://x/db/v1/todos/records?sort=-created%2Ctitle&per_page=5&total=true');
    assert.equal(calls[1].init.headers.Authorization, 'Bearer A');
    m.auth.logout();
    assert.equal(m.auth.token, '');
    assert.equal(m.auth.isValid, false);
  });

  test('record writes send JSON bodies, Dates in the server time format, ids escaped in paths', async () => {
    const { calls, fetch } = fake(() => json({ records: [] }));
    const m = new Micro({ url: 'http://x', fetch });
    const t = m.collection('todos');
    await t.create({ title: 'a', due: new Date(Date.UTC(2026, 0, 2, 3, 4, 5, 6)), nested: { at: new Date(0) } }, { id: 'x' });
    assert.deepEqual(calls[0].body, { data: { title: 'a', due: '2026-01-02 03:04:05.006Z', nested: { at: '1970-01-01 00:00:00.000Z' } }, id: 'x' });
    assert.equal(calls[0].init.headers['Content-Type'], 'application/json');
    await t.update('a/b c', { n: null }, { version: 3 });
    assert.equal(calls[1].url.pathname, '/db/v1/todos/records/a%2Fb%20c');
    assert.equal(calls[1].init.method, 'PATCH');
    assert.deepEqual(calls[1].body, { data: { n: null }, version: 3 });
    await t.replace('r', { title: 'b' });
    assert.deepEqual([calls[2].init.method, calls[2].body], ['PUT', { data: { title: 'b' } }]);
    await t.delete('r', { version: 2 });
    assert.deepEqual([calls[3].init.method, calls[3].url.search], ['DELETE', '?version=2']);
    await t.batch().create({ a: 1 }).update('r', { a: 2 }, { version: 1 }).replace('s', { a: 3 }).delete('t').send();
    assert.deepEqual(calls[4].body, {
      writes: [
        { action: 'create', data: { a: 1 } },
        { action: 'update', id: 'r', data: { a: 2 }, version: 1 },
        { action: 'replace', id: 's', data: { a: 3 } },
        { action: 'delete', id: 't' },
      ],
    });
    await assert.rejects(t.create(/** @type {any} */ ([1])), /must be an object/);
  });

  test('a token about to expire is refreshed once for concurrent requests', async () => {
    const now = Math.floor(Date.now() / 1000);
    let n = 0;
    const { calls, fetch } = fake(async (c) => {
      if (c.url.pathname === '/auth/token') {
        n++;
        await new Promise((r) => setTimeout(r, 20));
        if (c.body.refresh_token && c.body.refresh_token !== `R${n - 1}`) return json({ id: 'auth', code: 401, detail: 'invalid or expired refresh token' }, 401);
        // The first token expires within the margin; the refreshed one does not.
        return json({ access_token: `A${n}`, refresh_token: `R${n}`, expiry: String(now + (n === 1 ? 30 : 900)) });
      }
      return json({ auth: c.init.headers.Authorization });
    });
    const m = new Micro({ url: 'http://x', fetch });
    const changes = [];
    m.auth.onChange((s) => changes.push(s.token));
    await m.auth.login('a', 'b');
    const replies = await Promise.all([1, 2, 3].map(() => m.send('/p')));
    assert.deepEqual(replies.map((r) => r.auth), ['Bearer A2', 'Bearer A2', 'Bearer A2']);
    assert.equal(calls.filter((c) => c.url.pathname === '/auth/token').length, 2);
    assert.deepEqual(calls[1].body, { refresh_token: 'R1' });
    assert.deepEqual(changes, ['A1', 'A2']);
  });

  test('a 401 refreshes the token and retries once; a refused refresh ends the session', async () => {
    let valid = 'NEW';
    let refreshes = 0;
    const { calls, fetch } = fake((c) => {
      if (c.url.pathname === '/auth/token') {
        refreshes++;
        return refreshes === 1
          ? json({ access_token: 'NEW', refresh_token: 'R2', expiry: String(Math.floor(Date.now() / 1000) + 900) })
          : json({ id: 'auth', code: 401, detail: 'invalid or expired refresh token' }, 401);
      }
      return c.init.headers.Authorization === `Bearer ${valid}`
        ? json({ ok: 1 })
        : json({ id: 'auth', code: 401, detail: 'token expired' }, 401);
    });
    // A token of unknown expiry (not a JWT): only the 401 tells it is no good.
    const m = new Micro({ url: 'http://x', token: 'OLD', refreshToken: 'R1', fetch });
    assert.deepEqual(await m.send('/p'), { ok: 1 });
    assert.deepEqual(calls.map((c) => c.url.pathname), ['/p', '/auth/token', '/p']);
    assert.equal(m.auth.token, 'NEW');
    valid = 'revoked';
    const e = await m.send('/p').catch((e) => e);
    assert.equal(e.status, 401);
    assert.equal(e.detail, 'token expired');
    assert.equal(m.auth.token, '', 'the session ended with the refused refresh');
  });
});

/** A JWT-shaped token (unsigned: the client only reads it) with this payload. */
const jwt = (payload) => `x.${Buffer.from(JSON.stringify(payload)).toString('base64url')}.y`;

describe('app users', () => {
  const zoe = { id: 'u1', email: 'zoe@example.com', name: 'Zoe', verified: true, data: {}, created: 1, updated: 1 };
  const signedIn = (n, expiry) => ({ token: `T${n}`, refresh_token: `u1.sess00000000000${n}.secret${n}`, expiry, user: zoe });
  const inAnHour = () => Math.floor(Date.now() / 1000) + 3600;

  test('a sign-in holds an app session, refreshed through /users/v1/refresh, never /auth/token', async () => {
    let n = 0;
    const { calls, fetch } = fake((c) => {
      switch (c.url.pathname) {
        case '/users/v1/login':
        case '/users/v1/refresh':
          n++;
          // The first token expires within the margin; the refreshed one does not.
          return json(signedIn(n, n === 1 ? Math.floor(Date.now() / 1000) + 30 : inAnHour()));
        default:
          return json({ auth: c.init.headers.Authorization });
      }
    });
    const m = new Micro({ url: 'http://x', namespace: 'shop', fetch });
    const kinds = [];
    m.auth.onChange((s) => kinds.push(s.kind));
    const s = await m.users.login('zoe@example.com', 'pw');
    assert.equal(s.token, 'T1');
    assert.deepEqual(s.user, zoe);
    assert.equal(s.kind, 'user');
    assert.deepEqual(calls[0].body, { email: 'zoe@example.com', password: 'pw' });
    assert.equal(calls[0].init.headers['Micro-Namespace'], 'shop');
    assert.equal(calls[0].init.headers.Authorization, undefined);
    assert.deepEqual([m.auth.kind, m.auth.user, m.auth.account], ['user', zoe, zoe]);
    assert.equal(m.users.sessionId, 'sess000000000001');
    const replies = await Promise.all([1, 2].map(() => m.send('/p')));
    assert.deepEqual(replies.map((r) => r.auth), ['Bearer T2', 'Bearer T2']);
    assert.deepEqual(calls.map((c) => c.url.pathname), ['/users/v1/login', '/users/v1/refresh', '/p', '/p']);
    assert.deepEqual(calls[1].body, { refresh_token: 'u1.sess000000000001.secret1' });
    assert.equal(calls[1].init.headers.Authorization, undefined);
    assert.deepEqual(kinds, ['user', 'user']);
  });

  test('a 401 refreshes the app session; a wrong password is final, not refreshed', async () => {
    let valid = 'T1';
    const { calls, fetch } = fake((c) => {
      if (c.url.pathname === '/users/v1/refresh') return json(signedIn(2, inAnHour()));
      if (c.init.headers.Authorization !== `Bearer ${valid}`) return json({ id: 'auth', code: 401, detail: 'token revoked' }, 401);
      if (c.url.pathname === '/users/v1/me/password') return json({ id: 'users', code: 401, detail: 'the current password is wrong' }, 401);
      return json(zoe);
    });
    const m = new Micro({ url: 'http://x', namespace: 'shop', fetch });
    m.auth.set({ token: 'T1', refreshToken: 'u1.sess000000000001.secret1', expiry: inAnHour(), kind: 'user' });
    const e = await m.users.changePassword('wrong', 'new one').catch((e) => e);
    assert.ok(e instanceof MicroError);
    assert.deepEqual([e.status, e.id], [401, 'users']);
    assert.equal(m.auth.token, 'T1', 'a wrong password neither refreshes nor ends the session');
    valid = 'T2';
    assert.deepEqual(await m.users.me(), zoe);
    assert.deepEqual(calls.map((c) => c.url.pathname), ['/users/v1/me/password', '/users/v1/me', '/users/v1/refresh', '/users/v1/me']);
    assert.equal(m.auth.token, 'T2');
  });

  test('logout ends the session on the server; the token tells a stored session its kind', async () => {
    const { calls, fetch } = fake(() => new Response(null, { status: 204 }));
    const m = new Micro({ url: 'http://x', namespace: 'shop', fetch });
    const token = jwt({ sub: 'u1', typ: 'app', exp: inAnHour() });
    m.auth.set({ token, refreshToken: 'u1.sess000000000001.secret1' });
    assert.equal(m.auth.kind, 'user');
    await m.users.logout();
    assert.deepEqual([m.auth.token, m.auth.refreshToken, m.auth.kind, m.auth.user], ['', '', '', null]);
    assert.equal(calls[0].url.pathname, '/users/v1/logout');
    assert.deepEqual(calls[0].body, { refresh_token: 'u1.sess000000000001.secret1' });
    assert.equal(calls[0].init.headers.Authorization, undefined);
    // auth.logout() of an app session tells the server too; of an account's, nobody.
    m.auth.set({ token, refreshToken: 'R2' });
    await m.auth.logout();
    assert.deepEqual(calls[1].body, { refresh_token: 'R2' });
    m.auth.set({ token: jwt({ sub: 'alice', typ: 'user', exp: inAnHour() }), refreshToken: 'R3' });
    assert.equal(m.auth.kind, 'account');
    await m.auth.logout();
    assert.equal(calls.length, 2);
  });

  test('a provider sign-in: the URL to go to, then the state and code of the redirect page sign in', async () => {
    const { calls, fetch } = fake((c) => {
      if (c.url.pathname === '/users/v1/oauth/start') return json({ url: 'https://idp.example/auth?x=1', state: 'st' });
      return json(signedIn(1, inAnHour()));
    });
    const m = new Micro({ url: 'http://x', namespace: 'shop', fetch });
    const started = await m.users.oauthStart('corp', 'https://shop.example/cb');
    assert.deepEqual(started, { url: 'https://idp.example/auth?x=1', state: 'st' });
    const s = await m.users.oauthFinish('https://shop.example/cb?code=c%2B1&state=st');
    assert.deepEqual([s.kind, m.auth.kind, m.auth.token], ['user', 'user', 'T1']);
    await m.users.oauthFinish({ state: 's2', code: 'c2' });
    assert.deepEqual(
      calls.map((c) => `${c.url.pathname} ${JSON.stringify(c.body)}`),
      [
        '/users/v1/oauth/start {"provider":"corp","redirect_url":"https://shop.example/cb"}',
        '/users/v1/oauth/finish {"state":"st","code":"c+1"}',
        '/users/v1/oauth/finish {"state":"s2","code":"c2"}',
      ],
    );
    assert.equal(calls[0].init.headers.Authorization, undefined, 'no token goes to the provider flow');
  });

  test('in a browser tab, a callback whose state the tab did not start is refused (login CSRF)', async () => {
    const kept = new Map();
    globalThis.sessionStorage = {
      getItem: (k) => kept.get(k) ?? null,
      setItem: (k, v) => kept.set(k, v),
      removeItem: (k) => kept.delete(k),
    };
    try {
      const { calls, fetch } = fake((c) => {
        if (c.url.pathname === '/users/v1/oauth/start') return json({ url: 'https://idp.example/auth', state: 'mine' });
        return json(signedIn(1, inAnHour()));
      });
      const m = new Micro({ url: 'http://x', namespace: 'shop', fetch });
      await m.users.oauthStart('corp', 'https://shop.example/cb');
      await assert.rejects(m.users.oauthFinish('https://shop.example/cb?code=c&state=theirs'), (e) => e.status === 400 && /not started/.test(e.detail));
      assert.equal(calls.length, 1, 'nothing sent for a foreign state');
      await m.users.oauthStart('corp', 'https://shop.example/cb');
      const s = await m.users.oauthFinish('https://shop.example/cb?code=c&state=mine');
      assert.equal(s.kind, 'user');
      await assert.rejects(m.users.oauthFinish('https://shop.example/cb?code=c&state=mine'), /not started/, 'used once');
    } finally {
      delete globalThis.sessionStorage;
    }
  });

  test('routes, methods and bodies of the other calls', async () => {
    const { calls, fetch } = fake((c) => {
      if (c.init.method === 'DELETE') return new Response(null, { status: 204 });
      if (c.url.pathname === '/users/v1/users') return json({ users: [zoe], page: 2, per_page: 5 });
      if (c.url.pathname === '/users/v1/me/sessions') return json({ sessions: [{ id: 's' }] });
      return json({ message: 'ok' });
    });
    const m = new Micro({ url: 'http://x', namespace: 'shop', fetch });
    m.auth.set({ token: 'T', refreshToken: 'u1.sess000000000001.s', expiry: inAnHour(), kind: 'user' });
    await m.users.signup({ email: 'a@b.co', password: 'p', name: 'A' });
    await m.users.requestVerification('a@b.co');
    await m.users.requestReset('a@b.co');
    await m.users.requestCode('a@b.co');
    await m.users.update({ data: { plan: 'gold' } });
    assert.deepEqual(await m.users.sessions(), [{ id: 's' }]);
    await m.users.endSession('other/1');
    assert.equal(m.auth.token, 'T', 'another session ended: this one goes on');
    assert.deepEqual(await m.users.list({ page: 2, perPage: 5 }), { items: [zoe], page: 2, perPage: 5 });
    await m.users.get('u 1');
    await m.users.delete('u1');
    await m.users.saveSettings({ app_name: 'Shop' });
    await m.users.endSession('sess000000000001');
    assert.equal(m.auth.token, '', 'this session ended: signed out');
    assert.deepEqual(
      calls.map((c) => `${c.init.method} ${c.url.pathname}${c.url.search} ${c.body ? JSON.stringify(c.body) : ''}`.trim()),
      [
        'POST /users/v1/signup {"email":"a@b.co","password":"p","name":"A"}',
        'POST /users/v1/verification {"email":"a@b.co"}',
        'POST /users/v1/reset {"email":"a@b.co"}',
        'POST /users/v1/code {"email":"a@b.co"}',
        'PATCH /users/v1/me {"data":{"plan":"gold"}}',
        'GET /users/v1/me/sessions',
        'DELETE /users/v1/me/sessions/other%2F1',
        'GET /users/v1/users?page=2&per_page=5',
        'GET /users/v1/users/u%201',
        'DELETE /users/v1/users/u1',
        'POST /users/v1/settings {"app_name":"Shop"}',
        'DELETE /users/v1/me/sessions/sess000000000001',
      ],
    );
    assert.equal(calls[0].init.headers.Authorization, undefined, 'public calls carry no token');
    assert.equal(calls[4].init.headers.Authorization, 'Bearer T');
  });
});

/** An event-stream response of these events, then an error (`cut`), nothing more (`open`) or the end. */
function stream(events, { cut = false, open = false, signal } = {}) {
  const chunks = events.map((e) => enc.encode(typeof e === 'string' ? e : `data: ${JSON.stringify(e)}\n\n`));
  let i = 0;
  return new Response(
    new ReadableStream({
      start(c) {
        signal?.addEventListener('abort', () => c.error(signal.reason));
      },
      // One chunk a read: a cut comes only once every event was read.
      pull(c) {
        if (i < chunks.length) c.enqueue(chunks[i++]);
        else if (cut) c.error(new TypeError('terminated'));
        else if (!open) c.close();
        else return new Promise(() => {}); // nothing more, until aborted
      },
    }),
    { status: 200, headers: { 'content-type': 'text/event-stream' } },
  );
}

describe('subscribe', () => {
  test('reconnects after a break, resumes after the last cursor, delivers each change once', async () => {
    const rec = (v) => ({ id: 'r1', title: 't', version: v });
    const { calls, fetch } = fake((c, n) => {
      if (n === 1) {
        return stream(
          [
            { action: 'subscribed', cursor: 5 },
            { action: 'create', cursor: 6, record: rec(1) },
            { action: 'update', cursor: 7, record: rec(2) },
          ],
          { cut: true },
        );
      }
      if (n === 2) return json({ id: 'gateway', code: 503, detail: 'unavailable' }, 503);
      if (n === 3) {
        return stream(
          [
            { action: 'subscribed', cursor: 7 },
            { action: 'update', cursor: 7, record: rec(2) }, // already delivered
            { action: 'delete', cursor: 9, record: rec(2) },
          ],
          { open: true, signal: c.init.signal },
        );
      }
      throw new Error('no more connections expected');
    });
    const m = new Micro({ url: 'http://x', namespace: 'shop', fetch });
    const seen = [];
    const errors = [];
    let done;
    const finished = new Promise((r) => (done = r));
    const sub = m.collection('todos').subscribe(
      (ev) => {
        seen.push(`${ev.action}@${ev.cursor}`);
        if (ev.action === 'delete') done();
      },
      { filter: "done = false", onError: (e, info) => errors.push([e.status, info.retrying]), backoff: { initial: 1, max: 5 } },
    );
    assert.equal(await sub.ready, 5);
    await finished;
    assert.deepEqual(seen, ['create@6', 'update@7', 'delete@9']);
    assert.equal(sub.cursor, 9);
    assert.deepEqual(errors, [[0, true], [503, true]]);
    assert.equal(calls[0].url.search, '?filter=done+%3D+false');
    assert.equal(calls[2].url.searchParams.get('cursor'), '7');
    assert.equal(calls[0].init.headers.Accept, 'text/event-stream');
    sub.unsubscribe();
    assert.equal(sub.closed, true);
  });

  test('an error event that is not transient ends it', async () => {
    const { fetch } = fake(() => stream(['event: error\ndata: {"id":"db","code":400,"detail":"filter at 2: expected a field or a value, found end of filter","status":"Bad Request"}\n\n']));
    const m = new Micro({ url: 'http://x', fetch });
    const errors = [];
    const sub = m.collection('todos').subscribe(() => {}, { filter: 'a ', onError: (e, i) => errors.push([e.position, i.retrying]) });
    const e = await sub.ready.catch((e) => e);
    assert.ok(e instanceof MicroError);
    assert.equal(e.status, 400);
    assert.equal(e.position, 2);
    assert.deepEqual(errors, [[2, false]]);
    assert.equal(sub.closed, true);
  });

  test('waits for a callback that returns a promise before the next event', async () => {
    const { fetch } = fake((c) =>
      stream(
        [{ action: 'subscribed', cursor: 0 }, ...[1, 2, 3].map((i) => ({ action: 'create', cursor: i, record: { id: `${i}` } }))],
        { open: true, signal: c.init.signal },
      ),
    );
    const m = new Micro({ url: 'http://x', fetch });
    const log = [];
    let done;
    const finished = new Promise((r) => (done = r));
    const sub = m.collection('t').subscribe(async (ev) => {
      log.push(`start ${ev.cursor}`);
      await new Promise((r) => setTimeout(r, 5));
      log.push(`end ${ev.cursor}`);
      if (ev.cursor === 3) done();
    });
    await finished;
    sub.unsubscribe();
    assert.deepEqual(log, ['start 1', 'end 1', 'start 2', 'end 2', 'start 3', 'end 3']);
  });
});
