// Files (`micro.files`) against a real Micro server. The server and accounts come from the
// environment (services/files/tests/js_client.rs starts the server and sets them):
//   MICRO_API                                  the API gateway, like http://127.0.0.1:28080
//   MICRO_NAMESPACE                            a namespace whose app users are on
//   MICRO_ADMIN_ID, MICRO_ADMIN_PASSWORD       an admin of that namespace
//   MICRO_LAX_APP_USERS                        set when its app users sign in unconfirmed
//                                              (`verify_before_login: false`) and may make
//                                              many attempts and signups from one address
// Without MICRO_LAX_APP_USERS the tests are skipped (the database's runner, and
// test/run-local.sh, run every file of test/ without such a namespace). The tests sign up
// two app users with addresses of their own, change the namespace's files settings and
// upload (and delete) files, one of 9 MiB.

import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { Micro, MicroError } from '../src/index.js';
import { refused, waitFor } from './support.js';

const VARS = ['MICRO_API', 'MICRO_NAMESPACE', 'MICRO_ADMIN_ID', 'MICRO_ADMIN_PASSWORD', 'MICRO_LAX_APP_USERS'];
const env = process.env;
const missing = VARS.filter((v) => !env[v]);

if (!env.MICRO_LAX_APP_USERS) {
  test('files', { skip: 'MICRO_LAX_APP_USERS is not set: services/files/tests/js_client.rs runs these' }, () => {});
} else if (missing.length > 0) {
  test('the server to test against', () => {
    assert.fail(`${missing.join(', ')} ${missing.length === 1 ? 'is' : 'are'} not set (see the head of test/files.test.js)`);
  });
} else {
  suite();
}

/** A real PNG of 64×48 (four squares of red and blue). */
const PNG = Uint8Array.from(
  Buffer.from(
    'iVBORw0KGgoAAAANSUhEUgAAAEAAAAAwCAIAAAAuKetIAAAASElEQVR42u3QsQkAAAwCMP9/uv1BcAs4KzGXTDOuvwAAAAAAAAAAAAAAAAAAAAAAlAvbgf1BAAAAAAAAAAAAAAAAAAAAAABFHrEN9KZbz1c+AAAAAElFTkSuQmCC',
    'base64',
  ),
);

const MiB = 1 << 20;

/** The width and height a PNG's header gives. */
function pngSize(bytes) {
  assert.deepEqual([...bytes.subarray(1, 4)], [0x50, 0x4e, 0x47], 'a PNG');
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return [v.getUint32(16), v.getUint32(20)];
}

const sha256 = (bytes) => createHash('sha256').update(bytes).digest('hex');

/** `n` bytes that are not all alike. */
function bytesOf(n, seed = 1) {
  const out = new Uint8Array(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

/** A response's body as bytes. */
const bytes = async (res) => new Uint8Array(await res.arrayBuffer());



function suite() {
  const tag = Date.now().toString(36) + Math.random().toString(36).slice(2, 6);
  const ns = env.MICRO_NAMESPACE;
  /** Every request the app user's client sent: `METHOD /path`. */
  const seen = [];
  const logged = (url, init) => {
    seen.push(`${init?.method ?? 'GET'} ${new URL(url).pathname}`);
    return fetch(url, init);
  };
  const since = (mark) => seen.slice(mark);
  const client = (options = {}) => new Micro({ url: env.MICRO_API, namespace: ns, ...options });
  const admin = client();
  const app = client({ fetch: logged });
  const other = client();
  const anon = client();
  /** The files uploaded, deleted at the end. */
  const made = [];
  let uid = '';
  let pic;
  let signed = '';
  let settings;

  /** An app user signed up and in (unconfirmed: the namespace lets them). */
  async function appUser(c, name) {
    const email = `${name}.${tag}@example.com`;
    const password = `${name}'s long password`;
    await c.users.signup({ email, password });
    const s = await c.users.login(email, password);
    assert.equal(s.kind, 'user');
    return s.user.id;
  }

  before(async () => {
    await admin.auth.login(env.MICRO_ADMIN_ID, env.MICRO_ADMIN_PASSWORD);
    uid = await appUser(app, 'zoe');
    await appUser(other, 'yan');
  });

  after(async () => {
    for (const id of made) await admin.files.remove(id).catch(() => {});
    if (settings) await admin.files.saveSettings(settings).catch(() => {});
  });

  describe('files', () => {
    test('the admins keep the settings; app users upload only when they let them', async () => {
      settings = await admin.files.settings();
      assert.deepEqual(Object.keys(settings).sort(), ['app_uploads', 'max_file_size', 'max_total', 'thumbs', 'types']);
      const closed = await admin.files.saveSettings({ app_uploads: false });
      assert.deepEqual(
        closed,
        { app_uploads: false, max_file_size: 10 * MiB, max_total: 1024 * MiB, types: [], thumbs: ['100x100', '200x200', '400x400'] },
        'what is left out takes its default',
      );
      await refused(app.files.upload(PNG, { name: 'me.png' }), 403, /may not upload/, 'files');
      await refused(anon.files.upload(PNG, { name: 'me.png' }), 401, /sign in/);
      await refused(app.files.saveSettings({ app_uploads: true }), 403, /admins/);
      await refused(app.files.settings(), 403);
      await refused(admin.files.saveSettings({ max_file_size: 0 }), 400, /max_file_size/, 'files');
      await refused(admin.files.saveSettings({ app_uploads: true, admin: true }), 400, /unknown field/);
      const open = { app_uploads: true, max_file_size: 20 * MiB, max_total: 200 * MiB, types: [], thumbs: ['32x32', '40x10'] };
      assert.deepEqual(await admin.files.saveSettings(open), open);
      assert.deepEqual(await admin.files.settings(), open);
    });

    test('an app user uploads a PNG as a multipart form; get and list find it', async () => {
      const mark = seen.length;
      const progress = [];
      pic = await app.files.upload(PNG, { name: 'me.png', onProgress: (p) => progress.push(p) });
      made.push(pic.id);
      assert.deepEqual(since(mark), ['POST /files/v1/files'], 'one request: a form');
      assert.deepEqual(progress, [{ loaded: 0, total: PNG.length }, { loaded: PNG.length, total: PNG.length }]);
      assert.match(pic.id, /^[a-z0-9]{20}$/);
      assert.deepEqual(
        [pic.name, pic.size, pic.type, pic.public, pic.owner, pic.owner_kind, pic.sha256, pic.record],
        ['me.png', PNG.length, 'image/png', false, uid, 'user', sha256(PNG), undefined],
      );
      assert.equal(typeof pic.created, 'number');
      assert.equal(pic.url, `/files/v1/content/${ns}/${pic.id}/me.png`);
      assert.deepEqual(await app.files.get(pic.id), pic);
      assert.ok((await app.files.list()).some((f) => f.id === pic.id));
      assert.ok((await app.files.list()).every((f) => f.owner === uid), 'an app user lists their own');
      assert.deepEqual((await admin.files.list({ owner: uid })).map((f) => f.id), [pic.id], 'the team lists every file, by owner');
      await refused(other.files.get(pic.id), 404, /no such file/, 'files');
      assert.ok(!(await other.files.list()).some((f) => f.id === pic.id));
      await refused(anon.files.list(), 401);
    });

    test('a public File of the team is anybody’s, at its url', async () => {
      const logo = await admin.files.upload(new File([PNG], 'logo.png', { type: 'image/png' }), { public: true });
      made.push(logo.id);
      assert.deepEqual([logo.name, logo.public, logo.owner, logo.owner_kind], ['logo.png', true, env.MICRO_ADMIN_ID, 'account']);
      const url = admin.files.url(logo);
      assert.equal(url, `${env.MICRO_API}/files/v1/content/${ns}/${logo.id}/logo.png`);
      const res = await fetch(url); // no token, no namespace header
      assert.equal(res.status, 200);
      assert.equal(res.headers.get('content-type'), 'image/png');
      assert.deepEqual(await bytes(res), PNG);
      assert.deepEqual(await bytes(await anon.files.fetch(logo)), PNG);
    });

    test('fetch: the content with the token, whole and in ranges', async () => {
      const res = await app.files.fetch(pic);
      assert.equal(res.status, 200);
      assert.equal(res.headers.get('content-type'), 'image/png');
      assert.deepEqual(await bytes(res), PNG);
      const first = await app.files.fetch(pic, { range: [0, 9] });
      assert.equal(first.status, 206);
      assert.equal(first.headers.get('content-range'), `bytes 0-9/${PNG.length}`);
      assert.deepEqual(await bytes(first), PNG.subarray(0, 10));
      assert.deepEqual(await bytes(await app.files.fetch(pic, { range: [-5] })), PNG.subarray(PNG.length - 5));
      assert.deepEqual(await bytes(await app.files.fetch(pic, { range: [100] })), PNG.subarray(100));
      assert.deepEqual(await bytes(await app.files.fetch(pic.url, { range: 'bytes=10-19' })), PNG.subarray(10, 20));
      await refused(app.files.fetch(pic, { range: [100_000] }), 416, /has 129 bytes/);
      // Private: nobody else reads it, nor learns it exists.
      assert.equal((await fetch(app.files.url(pic))).status, 404);
      await refused(other.files.fetch(pic), 404);
      await refused(anon.files.fetch(pic), 404);
      assert.deepEqual(await bytes(await admin.files.fetch(pic)), PNG, 'the team does');
    });

    test('a thumbnail: its url, and its content of type image/png', async () => {
      assert.equal(app.files.url(pic, { thumb: 32 }), `${env.MICRO_API}${pic.url}?thumb=32x32`);
      assert.equal(app.files.url(pic, { thumb: '40x10' }), `${env.MICRO_API}${pic.url}?thumb=40x10`);
      const res = await app.files.fetch(pic, { thumb: 32 });
      assert.equal(res.status, 200);
      assert.equal(res.headers.get('content-type'), 'image/png');
      assert.deepEqual(pngSize(await bytes(res)), [32, 24], 'the 64×48 image fitting 32×32, its aspect kept');
      const wide = await app.files.fetch(pic, { thumb: '40x10' });
      const [w, h] = pngSize(await bytes(wide));
      assert.ok(h === 10 && (w === 13 || w === 14), `${w}×${h}`);
      await refused(app.files.fetch(pic, { thumb: 'abc' }), 400, undefined, 'files');
      await refused(app.files.fetch(pic, { thumb: 64 }), 400, /one of the namespace's sizes/, 'files');
    });

    test('a signed URL lets anybody read a private file, with the global fetch', async () => {
      signed = await app.files.signedUrl(pic.id, 600);
      assert.ok(signed.startsWith(`${env.MICRO_API}${pic.url}?expires=`), signed);
      assert.match(signed, /&sig=[A-Za-z0-9_-]+$/);
      const res = await fetch(signed);
      assert.equal(res.status, 200);
      assert.deepEqual(await bytes(res), PNG);
      assert.deepEqual(await bytes(await anon.files.fetch(signed, { range: [0, 3] })), PNG.subarray(0, 4));
      const tampered = signed.replace('expires=', 'expires=1');
      assert.equal((await fetch(tampered)).status, 403);
      assert.ok((await admin.files.signedUrl(pic.id)).startsWith(env.MICRO_API), 'the team signs too (an hour by default)');
      await refused(other.files.signedUrl(pic.id), 404);
      await refused(app.files.signedUrl(pic.id, 0), 400, /expires_in/, 'files');
    });

    test('a file over 8 MiB goes in resumable chunks of 4 MiB and arrives whole', async () => {
      const big = bytesOf(9 * MiB + 12_345, 7);
      const mark = seen.length;
      const progress = [];
      const f = await app.files.upload(big, { name: 'big.bin', onProgress: (p) => progress.push(p.loaded) });
      made.push(f.id);
      const log = since(mark);
      assert.equal(log[0], 'POST /files/v1/uploads');
      const chunk = /^PUT \/files\/v1\/uploads\/[a-z0-9]{20}$/;
      assert.equal(log.length, 4, log.join('\n'));
      assert.ok(log.slice(1).every((r) => chunk.test(r)), log.join('\n'));
      assert.deepEqual(progress, [0, 4 * MiB, 8 * MiB, big.length]);
      assert.deepEqual([f.name, f.size, f.type, f.owner, f.sha256], ['big.bin', big.length, 'application/octet-stream', uid, sha256(big)]);
      const back = await bytes(await app.files.fetch(f));
      assert.equal(back.length, big.length);
      assert.ok(Buffer.from(back).equals(Buffer.from(big)), 'the same bytes');
      const seam = await bytes(await app.files.fetch(f, { range: [4 * MiB - 2, 4 * MiB + 1] }));
      assert.deepEqual(seam, big.subarray(4 * MiB - 2, 4 * MiB + 2), 'across the chunks’ seam');
    });

    test('a chunk that meets a conflict or a network failure is sent again from where the server is', async () => {
      const calls = [];
      let puts = 0;
      // Chunk 1 arrives twice (the second: 409); chunk 2 arrives but its answer is lost;
      // chunk 3 is lost on the way the first time.
      const flaky = async (url, init) => {
        const method = init?.method ?? 'GET';
        calls.push(method);
        if (method !== 'PUT') return fetch(url, init);
        puts++;
        if (puts === 1) {
          const dup = await fetch(url, init);
          assert.equal(dup.status, 200, await dup.text());
          return fetch(url, init);
        }
        if (puts === 2) {
          await (await fetch(url, init)).arrayBuffer();
          throw new TypeError('fetch failed');
        }
        if (puts === 3) throw new TypeError('fetch failed');
        return fetch(url, init);
      };
      const flakyApp = client({ fetch: flaky, token: app.auth.token });
      const big = bytesOf(9 * MiB + 1, 11);
      const progress = [];
      const f = await flakyApp.files.upload(new Blob([big]), { name: 'flaky.bin', onProgress: (p) => progress.push(p.loaded) });
      made.push(f.id);
      assert.deepEqual(calls, ['POST', 'PUT', 'GET', 'PUT', 'GET', 'PUT', 'GET', 'PUT']);
      assert.deepEqual(progress, [0, 4 * MiB, 8 * MiB, big.length], 'each offset once');
      assert.deepEqual([f.size, f.sha256], [big.length, sha256(big)]);
      assert.ok(Buffer.from(await bytes(await app.files.fetch(f))).equals(Buffer.from(big)), 'the same bytes');
    });

    test('an aborted upload rejects with the AbortError and is cancelled', async () => {
      const abort = new AbortController();
      const mark = seen.length;
      const e = await app.files
        .upload(bytesOf(9 * MiB, 3), { signal: abort.signal, onProgress: (p) => p.loaded > 0 && abort.abort() })
        .then(() => assert.fail('not aborted'), (e) => e);
      assert.equal(e.name, 'AbortError');
      const upload = since(mark)[1].replace(/^PUT /, '');
      assert.match(upload, /^\/files\/v1\/uploads\/[a-z0-9]{20}$/);
      await waitFor(() => seen.includes(`DELETE ${upload}`), 'the upload to be cancelled');
      await waitFor(async () => (await app.send(upload).then(() => null, (e) => e))?.status === 404, 'the upload to be gone');
    });

    test('bad input is a MicroError with its status (400, 413, 415)', async () => {
      const words = new TextEncoder().encode('just some words, not a picture');
      await refused(app.files.upload(words, { name: 'fake.png', type: 'image/png' }), 415, /not the image\/png/, 'files');
      await refused(app.files.upload(words, { name: 'a/b.txt' }), 400, /not a file name/, 'files');
      await refused(app.files.upload(words, { record: 'no record' }), 400, /record is collection\/id/);
      await assert.rejects(app.files.upload('not bytes'), TypeError);
      const open = await admin.files.settings();
      await admin.files.saveSettings({ ...open, max_file_size: 1000 });
      try {
        await refused(app.files.upload(bytesOf(2000)), 413, /larger than/, 'files');
        await refused(app.files.upload(bytesOf(9 * MiB)), 413, /larger than/, 'files');
      } finally {
        await admin.files.saveSettings(open);
      }
      const e = await refused(app.files.get('nothing'), 404);
      assert.equal(e.transient, false);
    });

    test('remove: the file, its thumbnails and signed URLs go; fetch answers 404', async () => {
      await refused(other.files.remove(pic.id), 404, undefined, 'files');
      await app.files.remove(pic.id);
      await refused(app.files.get(pic.id), 404, /no such file/);
      await refused(app.files.fetch(pic), 404);
      await refused(admin.files.fetch(pic, { thumb: 32 }), 404);
      assert.equal((await fetch(signed)).status, 404, 'its signed URL ends with it');
      assert.ok(!(await app.files.list()).some((f) => f.id === pic.id));
      await refused(app.files.remove(pic.id), 404);
    });
  });
}
