// The client against a real Micro server. The server and accounts come from the
// environment (test/run-local.sh starts a server and sets them):
//   MICRO_API                                  the API gateway, like http://127.0.0.1:28080
//   MICRO_NAMESPACE                            the namespace (tenant app) to test in
//   MICRO_ADMIN_ID, MICRO_ADMIN_PASSWORD       an admin of that namespace
//   MICRO_USER_ID, MICRO_USER_PASSWORD         a plain user
//   MICRO_OTHER_ID, MICRO_OTHER_PASSWORD       another plain user
// The tests remake the collection `todos` of that namespace (and delete it at the end).

import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { Micro, MicroError, filter } from '../src/index.js';

const VARS = [
  'MICRO_API',
  'MICRO_NAMESPACE',
  'MICRO_ADMIN_ID',
  'MICRO_ADMIN_PASSWORD',
  'MICRO_USER_ID',
  'MICRO_USER_PASSWORD',
  'MICRO_OTHER_ID',
  'MICRO_OTHER_PASSWORD',
];
const env = process.env;
const COLLECTION = 'todos';
const missing = VARS.filter((v) => !process.env[v]);

if (missing.length > 0) {
  test('the server to test against', () => {
    assert.fail(
      `${missing.join(', ')} ${missing.length === 1 ? 'is' : 'are'} not set: these tests need a running Micro server ` +
        `(MICRO_API, e.g. http://127.0.0.1:28080), a namespace (MICRO_NAMESPACE) with an admin (MICRO_ADMIN_ID/_PASSWORD) ` +
        `and two plain users (MICRO_USER_ID/_PASSWORD, MICRO_OTHER_ID/_PASSWORD). ` +
        `Run test/run-local.sh to start one and run the tests against it.`,
    );
  });
} else {
  suite();
}

/** Resolves once `check()` is truthy (polled), or fails after `ms`. */
async function waitFor(check, what, ms = 5000) {
  const until = Date.now() + ms;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > until) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** A subscription that records what it receives. */
function recorder(collection, options = {}) {
  const events = [];
  const errors = [];
  const sub = collection.subscribe((ev) => events.push(ev), {
    ...options,
    onError: (e, info) => errors.push({ e, info }),
  });
  return { sub, events, errors };
}

const brief = (ev) => `${ev.action} ${ev.record.title}`;

function suite() {
  const client = () => new Micro({ url: env.MICRO_API, namespace: env.MICRO_NAMESPACE });
  const admin = client();
  const user = client();
  const other = client();
  /** @type {import('../src/index.js').RecordService<{ title: string, done?: boolean, n?: number, owner: string }>} */
  let todos;
  let otherTodos;
  const subscriptions = [];
  const track = (r) => (subscriptions.push(r.sub), r);

  before(async () => {
    await admin.auth.login(env.MICRO_ADMIN_ID, env.MICRO_ADMIN_PASSWORD);
    await user.auth.login(env.MICRO_USER_ID, env.MICRO_USER_PASSWORD);
    await other.auth.login(env.MICRO_OTHER_ID, env.MICRO_OTHER_PASSWORD);
    todos = user.collection(COLLECTION);
    otherTodos = other.collection(COLLECTION);
  });

  after(async () => {
    for (const s of subscriptions) s.unsubscribe();
    await admin.collections.delete(COLLECTION).catch(() => {});
  });

  describe('auth', () => {
    test('login gives a token, its expiry and the account', () => {
      assert.match(user.auth.token, /^[\w-]+\.[\w-]+\.[\w-]+$/);
      assert.ok(user.auth.refreshToken);
      assert.ok(user.auth.expiry > Date.now() / 1000 + 60, 'expires in the future');
      assert.equal(user.auth.account.id, env.MICRO_USER_ID);
      assert.equal(user.auth.account.namespace, env.MICRO_NAMESPACE);
      assert.equal(user.auth.isValid, true);
    });

    test('a wrong password is a 401 MicroError from auth', async () => {
      const c = client();
      const e = await c.auth.login(env.MICRO_OTHER_ID, 'not the password').catch((e) => e);
      assert.ok(e instanceof MicroError, String(e));
      assert.equal(e.status, 401);
      assert.equal(e.id, 'auth');
      assert.equal(c.auth.token, '');
    });

    test('the token is refreshed before it expires, once for concurrent requests', async () => {
      const c = client();
      await c.auth.login(env.MICRO_OTHER_ID, env.MICRO_OTHER_PASSWORD);
      const first = { token: c.auth.token, refresh: c.auth.refreshToken };
      // Every token is "about to expire" with this margin: each request refreshes first.
      c.refreshMargin = 1e9;
      const tokens = [];
      c.auth.onChange((s) => tokens.push(s.token));
      const lists = await Promise.all([1, 2, 3, 4].map(() => c.collection(COLLECTION).list().catch((e) => e)));
      // (the collection may not exist yet: what matters is that every request was let in)
      for (const l of lists) assert.ok(!(l instanceof MicroError) || l.status === 404, String(l?.detail));
      assert.equal(tokens.length, 1, 'one refresh for four concurrent requests');
      assert.notEqual(c.auth.refreshToken, first.refresh);
      assert.equal(c.auth.account.id, env.MICRO_OTHER_ID);
      // The old refresh token was used up: refreshing with it is refused.
      const stale = new Micro({ url: env.MICRO_API, namespace: env.MICRO_NAMESPACE, token: first.token, refreshToken: first.refresh });
      const e = await stale.auth.refresh().catch((e) => e);
      assert.equal(e.status, 401);
    });
  });

  describe('collections', () => {
    test('the admin saves todos with owner rules', async () => {
      await admin.collections.delete(COLLECTION).catch((e) => assert.equal(e.status, 404));
      const owner = 'owner = @request.auth.id';
      const info = await admin.collections.save({
        name: COLLECTION,
        schema: [
          { name: 'title', type: 'text', required: true },
          { name: 'done', type: 'bool' },
          { name: 'n', type: 'number' },
          { name: 'owner', type: 'text', required: true },
        ],
        rules: { list: owner, view: owner, create: owner, update: owner, delete: owner },
      });
      assert.equal(info.name, COLLECTION);
      assert.equal(info.rules.update, owner);
      assert.equal(info.schema.length, 4);
      const got = await admin.collections.get(COLLECTION);
      assert.deepEqual(got.rules, info.rules);
      assert.ok((await admin.collections.list()).some((c) => c.name === COLLECTION));
    });

    test('a plain user may not manage collections', async () => {
      const e = await user.collections.save({ name: 'mine', rules: { list: '' } }).catch((e) => e);
      assert.ok(e instanceof MicroError);
      assert.equal(e.status, 403);
      assert.equal(e.id, 'db');
    });

    test('a collection that does not exist is a 404', async () => {
      const e = await user.collection('nope').list().catch((e) => e);
      assert.equal(e.status, 404);
    });
  });

  describe('records', () => {
    let mine;
    before(async () => {
      mine = [];
      for (let n = 1; n <= 5; n++) {
        mine.push(await todos.create({ title: `task ${n}`, done: n % 2 === 0, n, owner: env.MICRO_USER_ID }));
      }
      await otherTodos.create({ title: 'other 1', n: 1, owner: env.MICRO_OTHER_ID });
      await otherTodos.create({ title: 'other 2', n: 2, owner: env.MICRO_OTHER_ID });
    });

    test('create gives the record with its id, times and version 1', async () => {
      const r = mine[0];
      assert.equal(r.title, 'task 1');
      assert.equal(r.version, 1);
      assert.match(r.created, /^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}Z$/);
      assert.equal(r.updated, r.created);
      assert.ok(r.id);
      const withId = await todos.create({ title: 'named', owner: env.MICRO_USER_ID }, { id: 'my-own-id' });
      assert.equal(withId.id, 'my-own-id');
      const dup = await todos.create({ title: 'again', owner: env.MICRO_USER_ID }, { id: 'my-own-id' }).catch((e) => e);
      assert.equal(dup.status, 409);
      await todos.delete('my-own-id');
    });

    test('each user lists only their own records', async () => {
      const page = await todos.list({ total: true, perPage: 100 });
      assert.equal(page.total, 5);
      assert.deepEqual(page.items.map((r) => r.owner), Array(5).fill(env.MICRO_USER_ID));
      const theirs = await otherTodos.list({ total: true });
      assert.equal(theirs.total, 2);
      assert.deepEqual(theirs.items.map((r) => r.title).sort(), ['other 1', 'other 2']);
    });

    test('filter, sort, page and fields', async () => {
      const done = await todos.list({ filter: 'done = true && n > 1', sort: '-n' });
      assert.deepEqual(done.items.map((r) => r.n), [4, 2]);
      const p2 = await todos.list({ sort: ['-n'], page: 2, perPage: 2, total: true });
      assert.equal(p2.page, 2);
      assert.equal(p2.perPage, 2);
      assert.equal(p2.total, 5);
      assert.deepEqual(p2.items.map((r) => r.n), [3, 2]);
      const slim = await todos.list({ sort: 'n', fields: ['title'] });
      assert.deepEqual(Object.keys(slim.items[0]).sort(), ['created', 'id', 'title', 'updated', 'version']);
      const one = await todos.getOne(mine[2].id, { fields: 'n' });
      assert.equal(one.n, 3);
      assert.equal(one.title, undefined);
      const full = await todos.getOne(mine[2].id);
      assert.equal(full.title, 'task 3');
    });

    test("another user's record does not exist for a user", async () => {
      const e = await otherTodos.getOne(mine[0].id).catch((e) => e);
      assert.equal(e.status, 404);
      const u = await otherTodos.update(mine[0].id, { title: 'hijack' }).catch((e) => e);
      assert.equal(u.status, 404);
      const c = await todos.create({ title: 'as other', owner: env.MICRO_OTHER_ID }).catch((e) => e);
      assert.equal(c.status, 403);
    });

    test('the schema is enforced', async () => {
      const e = await todos.create({ owner: env.MICRO_USER_ID }).catch((e) => e);
      assert.equal(e.status, 400);
      assert.match(e.detail, /title/);
    });

    test('update with a version, and a 409 when it is stale', async () => {
      const r = mine[0];
      const u = await todos.update(r.id, { done: true }, { version: 1 });
      assert.equal(u.version, 2);
      assert.equal(u.done, true);
      assert.equal(u.title, 'task 1', 'a merge keeps the other fields');
      const e = await todos.update(r.id, { done: false }, { version: 1 }).catch((e) => e);
      assert.ok(e instanceof MicroError);
      assert.equal(e.status, 409);
      assert.equal(e.code, 409);
      assert.equal(e.id, 'db');
      assert.match(e.detail, /version 2/);
      const removed = await todos.update(r.id, { n: null });
      assert.equal('n' in removed, false, 'null removes a field');
      const rep = await todos.replace(r.id, { title: 'replaced', owner: env.MICRO_USER_ID }, { version: 3 });
      assert.equal(rep.version, 4);
      assert.equal(rep.done, undefined, 'a replace drops the fields not given');
      const d = await todos.delete(r.id, { version: 3 }).catch((e) => e);
      assert.equal(d.status, 409);
      assert.equal(await todos.delete(r.id, { version: 4 }), undefined);
      const gone = await todos.getOne(r.id).catch((e) => e);
      assert.equal(gone.status, 404);
    });

    test('a filter error is a 400 with its position', async () => {
      const e = await todos.list({ filter: 'done = true && (n >' }).catch((e) => e);
      assert.ok(e instanceof MicroError);
      assert.equal(e.status, 400);
      assert.equal(e.id, 'db');
      assert.equal(e.position, 19);
      assert.match(e.detail, /^filter at 19: expected/);
      const q = await todos.list({ filter: "title = 'unclosed" }).catch((e) => e);
      assert.equal(q.status, 400);
      assert.equal(typeof q.position, 'number');
    });

    test('a batch writes all or nothing', async () => {
      const [a, b] = await todos
        .batch()
        .create({ title: 'batch a', owner: env.MICRO_USER_ID }, { id: 'batch-a' })
        .create({ title: 'batch b', owner: env.MICRO_USER_ID })
        .send();
      assert.equal(a.id, 'batch-a');
      assert.equal(b.title, 'batch b');
      const records = await todos
        .batch()
        .update('batch-a', { done: true }, { version: 1 })
        .replace(b.id, { title: 'batch b2', owner: env.MICRO_USER_ID }, { version: 1 })
        .delete('batch-a', { version: 2 })
        .send();
      assert.deepEqual(records.map((r) => [r.id, r.version]), [['batch-a', 2], [b.id, 2], ['batch-a', 2]]);
      // One stale write fails the whole batch: the create before it is not kept.
      const batch = todos
        .batch()
        .create({ title: 'batch c', owner: env.MICRO_USER_ID }, { id: 'batch-c' })
        .update(b.id, { done: true }, { version: 1 });
      assert.equal(batch.writes.length, 2);
      const e = await batch.send().catch((e) => e);
      assert.equal(e.status, 409);
      assert.equal((await todos.getOne('batch-c').catch((e) => e)).status, 404);
      // So does one the rules refuse.
      const f = await todos
        .batch()
        .create({ title: 'batch d', owner: env.MICRO_USER_ID }, { id: 'batch-d' })
        .create({ title: 'batch e', owner: env.MICRO_OTHER_ID })
        .send()
        .catch((e) => e);
      assert.equal(f.status, 403);
      assert.equal((await todos.getOne('batch-d').catch((e) => e)).status, 404);
      await todos.delete(b.id);
    });
  });

  describe('realtime', () => {
    test("a subscriber sees its own changes only, in order", async () => {
      const mine = track(recorder(todos));
      const theirs = track(recorder(otherTodos));
      await Promise.all([mine.sub.ready, theirs.sub.ready]);
      const a = await todos.create({ title: 'rt a', owner: env.MICRO_USER_ID });
      await otherTodos.create({ title: 'rt other', owner: env.MICRO_OTHER_ID });
      await todos.update(a.id, { done: true });
      const b = await todos.create({ title: 'rt b', owner: env.MICRO_USER_ID });
      await todos.delete(a.id);
      await waitFor(() => mine.events.length >= 4 && theirs.events.length >= 1, 'the events');
      assert.deepEqual(mine.events.map(brief), ['create rt a', 'update rt a', 'create rt b', 'delete rt a']);
      assert.equal(mine.events[1].record.done, true);
      assert.equal(mine.events[2].record.id, b.id);
      const cursors = mine.events.map((e) => e.cursor);
      assert.deepEqual(cursors, [...cursors].sort((x, y) => x - y), 'cursors increase');
      assert.equal(new Set(cursors).size, cursors.length);
      assert.deepEqual(theirs.events.map(brief), ['create rt other']);
      assert.equal(mine.sub.cursor, cursors.at(-1));
      assert.deepEqual(mine.errors, []);
      mine.sub.unsubscribe();
      theirs.sub.unsubscribe();
      assert.equal(mine.sub.closed, true);
    });

    test('a subscription resumes from its cursor without losing or repeating events', async () => {
      const first = track(recorder(todos));
      await first.sub.ready;
      await todos.create({ title: 'resume 1', owner: env.MICRO_USER_ID });
      await waitFor(() => first.events.length === 1, 'resume 1');
      first.sub.unsubscribe();
      const cursor = first.sub.cursor;
      // Written while nobody listens.
      const r2 = await todos.create({ title: 'resume 2', owner: env.MICRO_USER_ID });
      await otherTodos.create({ title: 'resume other', owner: env.MICRO_OTHER_ID });
      await todos.update(r2.id, { n: 2 });
      const again = track(recorder(todos, { cursor }));
      assert.equal(await again.sub.ready, cursor);
      await todos.create({ title: 'resume 3', owner: env.MICRO_USER_ID });
      await waitFor(() => again.events.length >= 3, 'the missed events and the new one');
      await new Promise((r) => setTimeout(r, 100)); // anything doubled would be here by now
      assert.deepEqual(again.events.map(brief), ['create resume 2', 'update resume 2', 'create resume 3']);
      assert.ok(again.events[0].cursor > cursor);
      again.sub.unsubscribe();
    });

    test('a broken connection reconnects by itself and resumes', async () => {
      // A fetch that breaks the first subscription's connection once an event came through.
      let cuts = 0;
      const cutting = async (url, init) => {
        const res = await fetch(url, init);
        if (!String(url).includes('/subscribe') || cuts > 0) return res;
        cuts++;
        const reader = res.body.getReader();
        let events = 0;
        const text = new TextDecoder();
        const body = new ReadableStream({
          async pull(c) {
            if (events >= 2) {
              reader.cancel().catch(() => {});
              c.error(new TypeError('connection reset'));
              return;
            }
            const { done, value } = await reader.read();
            if (done) return c.close();
            events += (text.decode(value).match(/\n\n/g) ?? []).length;
            c.enqueue(value);
          },
          cancel(reason) {
            return reader.cancel(reason);
          },
        });
        return new Response(body, { status: res.status, headers: res.headers });
      };
      const c = new Micro({ url: env.MICRO_API, namespace: env.MICRO_NAMESPACE, fetch: cutting });
      await c.auth.login(env.MICRO_USER_ID, env.MICRO_USER_PASSWORD);
      const subscribed = [];
      const r = track(recorder(c.collection(COLLECTION), { backoff: { initial: 20, max: 50 }, onSubscribed: (n) => subscribed.push(n) }));
      const rec = r; // onError comes from recorder
      await r.sub.ready;
      await todos.create({ title: 'cut 1', owner: env.MICRO_USER_ID });
      await waitFor(() => rec.errors.length === 1, 'the break');
      await todos.create({ title: 'cut 2', owner: env.MICRO_USER_ID });
      await waitFor(() => subscribed.length === 2, 'the reconnection');
      await todos.create({ title: 'cut 3', owner: env.MICRO_USER_ID });
      await waitFor(() => rec.events.length >= 3, 'the events');
      await new Promise((res) => setTimeout(res, 100));
      assert.deepEqual(rec.events.map(brief), ['create cut 1', 'create cut 2', 'create cut 3']);
      assert.equal(rec.errors[0].e.status, 0);
      assert.equal(rec.errors[0].info.retrying, true);
      assert.equal(subscribed[1], rec.events[0].cursor, 'resumed after the last event delivered');
      r.sub.unsubscribe();
    });

    test('id and filter select the changes', async () => {
      const a = await todos.create({ title: 'sel a', n: 1, owner: env.MICRO_USER_ID });
      const byId = track(recorder(todos, { id: a.id }));
      const byFilter = track(recorder(todos, { filter: filter('n >= {:n}', { n: 10 }) }));
      await Promise.all([byId.sub.ready, byFilter.sub.ready]);
      await todos.create({ title: 'sel b', n: 20, owner: env.MICRO_USER_ID });
      await todos.update(a.id, { n: 2 });
      await todos.update(a.id, { n: 11 });
      await waitFor(() => byId.events.length >= 2 && byFilter.events.length >= 2, 'the events');
      assert.deepEqual(byId.events.map((e) => e.record.n), [2, 11]);
      assert.deepEqual(byFilter.events.map((e) => `${e.record.title} ${e.record.n}`), ['sel b 20', 'sel a 11']);
      byId.sub.unsubscribe();
      byFilter.sub.unsubscribe();
    });

    test('a bad filter ends the subscription with a MicroError', async () => {
      const r = track(recorder(todos, { filter: 'n >' }));
      const e = await r.sub.ready.catch((e) => e);
      assert.ok(e instanceof MicroError);
      assert.equal(e.status, 400);
      assert.equal(e.position, 3);
      assert.equal(r.sub.closed, true);
      assert.equal(r.errors.length, 1);
      assert.equal(r.errors[0].info.retrying, false);
    });
  });

  describe('the filter helper', () => {
    const nasty = ["' || 1=1 || '", "it's", 'back\\slash', 'a "quoted" \\\' mix', 'line\nbreak', '%', '{:t}'];
    before(async () => {
      await todos.batch().create({ title: 'innocent', owner: env.MICRO_USER_ID }).send();
      for (const t of nasty) await todos.create({ title: t, owner: env.MICRO_USER_ID });
    });

    test('injection attempts match literally', async () => {
      for (const t of nasty) {
        const f = filter('title = {:t}', { t });
        const page = await todos.list({ filter: f, total: true });
        assert.equal(page.total, 1, `${f} matches one record`);
        assert.equal(page.items[0].title, t);
      }
      const all = await todos.list({ filter: filter('title = {:t} || title = {:u}', { t: "' || 1=1 || '", u: 'x' }), total: true });
      assert.equal(all.total, 1);
    });

    test('contains with wildcards, numbers, booleans, null and dates', async () => {
      const pct = await todos.list({ filter: filter('title ~ {:t}', { t: '%' }), total: true });
      assert.equal(pct.total, 1, "'%' is no wildcard");
      const since = new Date(Date.now() - 60_000);
      const recent = await todos.list({ filter: filter('created >= {:d} && title = {:t}', { d: since, t: 'innocent' }), total: true });
      assert.equal(recent.total, 1);
      const future = await todos.list({ filter: filter('created > {:d}', { d: new Date(Date.now() + 3_600_000) }), total: true });
      assert.equal(future.total, 0);
      const mixed = await todos.list({
        filter: filter('n = {:nothing} && title = {:t} && done != {:yes} && n != {:big}', { nothing: null, t: 'innocent', yes: true, big: 1e21 }),
        total: true,
      });
      assert.equal(mixed.total, 1);
      assert.equal(user.filter('n > {:n}', { n: -0.5 }), 'n > -0.5');
    });
  });

  describe('search, aggregates and relations', () => {
    test('full-text search ranks, prefixes and follows the list rule; aggregates group; relations expand', async () => {
      const posts = `posts_${Date.now().toString(36)}`;
      const authors = `${posts}_authors`;
      await admin.collections.save({ name: authors, rules: { list: '', view: '' } });
      await admin.collections.save({
        name: posts,
        schema: [
          { name: 'title', type: 'text' },
          { name: 'stars', type: 'number' },
          { name: 'author', type: 'relation', collection: authors },
        ],
        search: ['title'],
        rules: { list: 'stars > 0', view: '' },
      });
      try {
        const ann = await admin.collection(authors).create({ name: 'Ann' });
        const p = admin.collection(posts);
        await p.batch()
          .create({ title: 'Databases at scale, databases', stars: 5, author: ann.id })
          .create({ title: 'Rust databases', stars: 3, author: ann.id })
          .create({ title: 'Hidden databases', stars: 0, author: ann.id })
          .send();
        const mine = user.collection(posts);
        const found = await mine.search('databases');
        assert.deepEqual(found.items.map((r) => r.title), ['Databases at scale, databases', 'Rust databases'], 'the list rule hides one');
        assert.deepEqual((await mine.search('rus', { prefix: true })).items.map((r) => r.title), ['Rust databases']);
        const rows = await mine.aggregate({ aggregates: [{ op: 'count' }, { op: 'sum', field: 'stars' }] });
        assert.deepEqual(rows, [{ count: 2, sum_stars: 8 }]);
        const listed = await mine.list({ expand: 'author', sort: 'title' });
        assert.equal(listed.items[0].expand.author.name, 'Ann');
        const e = await user.collection(authors).search('ann').catch((e) => e);
        assert.ok(e instanceof MicroError && e.status === 400, String(e));
      } finally {
        await admin.collections.delete(posts).catch(() => {});
        await admin.collections.delete(authors).catch(() => {});
      }
    });
  });
}
