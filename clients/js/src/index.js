// @micro/client: the JavaScript client of Micro's Backend-as-a-Service products: the
// database, the app users who sign in to it, and files.
// No dependencies: only the platform's fetch, ReadableStream, TextDecoder,
// AbortController, Blob and FormData (browsers, Node.js 18+, Deno, Bun).

import { readEventStream } from './sse.js';

export { readEventStream };

/**
 * @typedef {{ id: string, created: string, updated: string, version: number }} RecordMeta
 * @typedef {{ [field: string]: unknown }} Data
 */

/** The fields every record has, whatever its collection. */
export const RECORD_FIELDS = Object.freeze(['id', 'created', 'updated', 'version']);

// ---------------------------------------------------------------------------------------
// Errors

/**
 * An error of the API (or of reaching it). `status` is the HTTP status (0 when the server
 * could not be reached or the connection broke), `code`, `detail` and `id` come from the
 * server's JSON error body (`{"id":"db","code":400,"detail":"…","status":"Bad Request"}`);
 * `position` is where a filter (or a rule) went wrong, in characters from 0, when the
 * detail says so (`filter at 6: expected …`).
 */
export class MicroError extends Error {
  /**
   * @param {{ status: number, code?: number, detail: string, id?: string,
   *   statusText?: string, data?: unknown, cause?: unknown }} init
   */
  constructor(init) {
    super(init.detail || init.statusText || `request failed with status ${init.status}`, init.cause === undefined ? undefined : { cause: init.cause });
    this.name = 'MicroError';
    /** The HTTP status; 0 when the server could not be reached or the stream broke. */
    this.status = init.status;
    /** The code of the error body (the HTTP status the error maps to). */
    this.code = init.code ?? init.status;
    /** What went wrong, in words. */
    this.detail = init.detail;
    /** Which service answered with the error (`db`, `auth`), "" when none did. */
    this.id = init.id ?? '';
    /** The status in words (`Bad Request`). */
    this.statusText = init.statusText ?? '';
    /** The error body as it came. */
    this.data = init.data;
    const m = /(?:^|\s)at (\d+): expected /.exec(init.detail ?? '');
    /** Where the filter or rule went wrong (characters from 0), when it did. */
    this.position = m ? Number(m[1]) : undefined;
  }

  /** Whether trying again later may succeed (network failures, 408, 429, 5xx). */
  get transient() {
    return this.status === 0 || this.status === 408 || this.status === 429 || this.status >= 500;
  }
}

/**
 * The MicroError of an error body (or of the response when it is not one).
 * @param {number} status
 * @param {string} statusText
 * @param {string} text
 */
function errorOf(status, statusText, text) {
  /** @type {any} */
  let body;
  try {
    body = JSON.parse(text);
  } catch {
    body = undefined;
  }
  if (body && typeof body === 'object' && typeof body.detail === 'string') {
    return new MicroError({
      status,
      code: typeof body.code === 'number' ? body.code : status,
      detail: body.detail,
      id: typeof body.id === 'string' ? body.id : '',
      statusText: typeof body.status === 'string' ? body.status : statusText,
      data: body,
    });
  }
  const detail = text.trim().slice(0, 500) || statusText || `status ${status}`;
  return new MicroError({ status, detail, statusText, data: body ?? text });
}

/** @param {unknown} e */
function isAbort(e) {
  return typeof e === 'object' && e !== null && /** @type {any} */ (e).name === 'AbortError';
}

// ---------------------------------------------------------------------------------------
// Filters

/**
 * A date as the server writes times: `YYYY-MM-DD HH:MM:SS.mmmZ` (UTC).
 * @param {Date} date
 */
export function formatDate(date) {
  if (!(date instanceof Date) || Number.isNaN(date.getTime())) {
    throw new TypeError('formatDate: not a valid Date');
  }
  return date.toISOString().replace('T', ' ');
}

/**
 * A finite number as the filter language writes it: digits, an optional `-` and `.`
 * (no exponent, which the language does not read).
 * @param {number} n
 */
function formatNumber(n) {
  if (!Number.isFinite(n)) throw new TypeError(`filter: ${n} is not a finite number`);
  if (Object.is(n, -0)) return '0';
  const s = String(n);
  const e = s.indexOf('e');
  if (e < 0) return s;
  const neg = s[0] === '-';
  const mantissa = s.slice(neg ? 1 : 0, e);
  const exp = Number(s.slice(e + 1));
  const dot = mantissa.indexOf('.');
  const digits = mantissa.replace('.', '');
  const point = (dot < 0 ? mantissa.length : dot) + exp;
  let out;
  if (point <= 0) out = '0.' + '0'.repeat(-point) + digits;
  else if (point >= digits.length) out = digits + '0'.repeat(point - digits.length);
  else out = digits.slice(0, point) + '.' + digits.slice(point);
  return (neg ? '-' : '') + out;
}

/**
 * A string as a filter literal: single-quoted, with `\` and `'` escaped by `\` (the only
 * escapes the language has; every other character, newlines included, stands for itself).
 * @param {string} s
 */
function quote(s) {
  return "'" + s.replace(/\\/g, '\\\\').replace(/'/g, "\\'") + "'";
}

/**
 * A value as a literal of the filter language.
 * @param {unknown} v
 * @param {string} name the placeholder, for errors
 * @returns {string}
 */
function literal(v, name) {
  if (v === null) return 'null';
  switch (typeof v) {
    case 'string':
      return quote(v);
    case 'number':
      return formatNumber(v);
    case 'bigint':
      return v.toString();
    case 'boolean':
      return v ? 'true' : 'false';
    case 'undefined':
      throw new TypeError(`filter: no value for {:${name}}`);
    case 'object':
      if (v instanceof Date) return quote(formatDate(v));
      return quote(JSON.stringify(v));
    default:
      throw new TypeError(`filter: {:${name}} is a ${typeof v}, which has no filter literal`);
  }
}

/**
 * A filter from a template and values, each `{:name}` replaced by its value as a safe
 * literal: strings quoted and escaped (so `' || 1=1 || '` is only text), numbers,
 * booleans, `null`, Dates (as `'YYYY-MM-DD HH:MM:SS.mmmZ'`), anything else as its quoted
 * JSON. Values are put in once: a value containing `{:x}` stays as it is.
 *
 * @example filter('title = {:t} && n > {:n}', { t: "x'y", n: 1 }) // "title = 'x\\'y' && n > 1"
 * @param {string} template
 * @param {Record<string, unknown>} [params]
 * @returns {string}
 */
export function filter(template, params = {}) {
  return template.replace(/\{:([A-Za-z0-9_]+)\}/g, (_, name) => {
    if (!Object.prototype.hasOwnProperty.call(params, name)) {
      throw new TypeError(`filter: no value for {:${name}}`);
    }
    return literal(params[name], name);
  });
}

/**
 * JSON with Dates in the server's time format (`YYYY-MM-DD HH:MM:SS.mmmZ`), so they
 * compare with `created`, `updated` and `@now` as text does.
 * @param {unknown} value
 */
function toJSON(value) {
  return JSON.stringify(value, function (key, v) {
    const original = /** @type {any} */ (this)[key];
    return original instanceof Date ? formatDate(original) : v;
  });
}

// ---------------------------------------------------------------------------------------
// Auth

/**
 * The payload of a JWT (not verified: only to know when to refresh and what it is).
 * @param {string} token
 * @returns {any}
 */
function jwtPayload(token) {
  try {
    const part = token.split('.')[1];
    if (!part) return null;
    const b64 = part.replace(/-/g, '+').replace(/_/g, '/');
    const json = JSON.parse(atob(b64 + '='.repeat((4 - (b64.length % 4)) % 4)));
    return json && typeof json === 'object' ? json : null;
  } catch {
    return null;
  }
}

/**
 * The Unix second a JWT expires at, from its payload (not verified).
 * @param {string} token
 * @returns {number | null}
 */
function jwtExpiry(token) {
  const exp = jwtPayload(token)?.exp;
  return typeof exp === 'number' ? exp : null;
}

/**
 * What a token is a session of: `user` for an app user's (type `app`), else `account`.
 * @param {string} token
 * @returns {'account' | 'user'}
 */
function kindOf(token) {
  return jwtPayload(token)?.typ === 'app' ? 'user' : 'account';
}

/**
 * The kind of session an Auth holds: `account` (a platform account: `POST /auth/token`),
 * `user` (an app user of the namespace: `/users/v1/…`), or `""` when signed out.
 * @typedef {'account' | 'user' | ''} SessionKind
 */

/**
 * The signed-in account (or app user) and its tokens: a platform account signs in with
 * `POST /auth/token` (an id and secret), an app user through `micro.users`; either
 * refreshes with its refresh token where it signed in (each refresh token works once: a
 * refresh gives a new one).
 */
export class Auth {
  /** @param {Micro} client @param {{ token?: string, refreshToken?: string }} init */
  constructor(client, init) {
    /** @private */
    this._client = client;
    /** @private @type {string} */
    this._token = init.token ?? '';
    /** @private @type {string} */
    this._refreshToken = init.refreshToken ?? '';
    /** @private @type {number | null} */
    this._expiry = init.token ? jwtExpiry(init.token) : null;
    /** @private @type {any} */
    this._account = null;
    /** @private @type {SessionKind} */
    this._kind = init.token ? kindOf(init.token) : init.refreshToken ? 'account' : '';
    /** @private @type {Promise<any> | null} */
    this._refreshing = null;
    /** @private @type {Set<Function>} */
    this._listeners = new Set();
  }

  /** The access token ("" when signed out). */
  get token() {
    return this._token;
  }

  /** The refresh token ("" when none). */
  get refreshToken() {
    return this._refreshToken;
  }

  /** When the access token expires, Unix seconds (null when unknown). */
  get expiry() {
    return this._expiry;
  }

  /**
   * The signed-in account, as the last sign-in or refresh gave it (null when unknown):
   * a platform account, or the app user (then also `user`).
   */
  get account() {
    return this._account;
  }

  /** The signed-in app user (`micro.users`), null when the session is not an app user's. */
  get user() {
    return this._kind === 'user' ? this._account : null;
  }

  /**
   * What the session is: `account` (a platform account, refreshed through `/auth/token`),
   * `user` (an app user, refreshed through `/users/v1/refresh`), `""` when signed out.
   * @returns {SessionKind}
   */
  get kind() {
    return this._kind;
  }

  /** Whether there is an access token that has not expired (or that can be refreshed). */
  get isValid() {
    if (!this._token) return false;
    if (this._refreshToken) return true;
    return this._expiry === null || this._expiry > Date.now() / 1000;
  }

  /**
   * Signs in with an account's id and password (its secret) in the client's namespace.
   * @param {string} id
   * @param {string} password
   * @param {{ signal?: AbortSignal }} [options]
   */
  async login(id, password, options = {}) {
    const reply = await this._client.send('/auth/token', {
      method: 'POST',
      body: { id, secret: password },
      auth: false,
      signal: options.signal,
    });
    return this._took(reply);
  }

  /**
   * Exchanges the refresh token for new tokens now, where the session signed in
   * (`/auth/token` for an account, `/users/v1/refresh` for an app user). Concurrent calls
   * share one request (a refresh token works once). When the server refuses it (401) the
   * session is over: the tokens are cleared.
   * @param {{ signal?: AbortSignal }} [options]
   */
  refresh(options = {}) {
    if (this._refreshing) return this._refreshing;
    const refreshToken = this._refreshToken;
    if (!refreshToken) {
      return Promise.reject(
        new MicroError({ status: 401, detail: 'no refresh token: log in first', id: 'client' }),
      );
    }
    const app = this._kind === 'user';
    const p = this._client
      .send(app ? '/users/v1/refresh' : '/auth/token', {
        method: 'POST',
        body: { refresh_token: refreshToken },
        auth: false,
        signal: options.signal,
      })
      .then(
        (reply) => {
          // Logged out (or in again) meanwhile: that session stands.
          if (this._refreshToken !== refreshToken) throw new MicroError({ status: 401, detail: 'the session changed during the refresh', id: 'client' });
          return app ? this._tookUser(reply) : this._took(reply);
        },
        (e) => {
          if (e instanceof MicroError && e.status === 401 && this._refreshToken === refreshToken) this._clear();
          throw e;
        },
      )
      .finally(() => {
        if (this._refreshing === p) this._refreshing = null;
      });
    this._refreshing = p;
    return p;
  }

  /**
   * Forgets the tokens and the account (the client is anonymous again). An app user's
   * session is also ended on the server (`POST /users/v1/logout`, in the background: the
   * promise settles when it is done, and never rejects; `micro.users.logout()` waits for
   * it and reports its failure).
   * @returns {Promise<void>}
   */
  logout() {
    const kind = this._kind;
    const refreshToken = this._refreshToken;
    this._clear();
    if (kind !== 'user' || !refreshToken) return Promise.resolve();
    return this._endUserSession(refreshToken).catch(() => {});
  }

  /**
   * Sets the session, e.g. one kept in storage (see `onChange`). `kind` (what `onChange`
   * gave) says where it refreshes; without it, the token tells (an app user's is of type
   * `app`).
   * @param {{ token: string, refreshToken?: string, expiry?: number | null, account?: unknown, kind?: SessionKind }} session
   */
  set(session) {
    const token = session.token ?? '';
    const refreshToken = session.refreshToken ?? '';
    const expiry = session.expiry ?? (token ? jwtExpiry(token) : null);
    const kind = session.kind || (token ? kindOf(token) : refreshToken ? 'account' : '');
    this._set(token, refreshToken, expiry, session.account ?? null, token || refreshToken ? kind : '');
  }

  /**
   * Calls `listener` with the session each time it changes (sign-in, refresh, logout).
   * @param {(session: { token: string, refreshToken: string, expiry: number | null, account: any, kind: SessionKind }) => void} listener
   * @returns {() => void} removes the listener
   */
  onChange(listener) {
    this._listeners.add(listener);
    return () => this._listeners.delete(listener);
  }

  /** @private @param {any} reply */
  _took(reply) {
    const expiry = reply.expiry !== undefined && reply.expiry !== '' ? Number(reply.expiry) : jwtExpiry(reply.access_token);
    this._set(reply.access_token ?? '', reply.refresh_token ?? '', Number.isFinite(expiry) ? expiry : null, reply.account ?? null, reply.access_token ? 'account' : '');
    return this._session();
  }

  /**
   * Takes an app user's sign-in (`{ token, refresh_token, expiry, user }`).
   * @internal
   * @param {any} reply
   */
  _tookUser(reply) {
    const token = typeof reply?.token === 'string' ? reply.token : '';
    if (!token) throw new MicroError({ status: 0, detail: 'the sign-in reply has no token', id: 'client', data: reply });
    const expiry = reply.expiry !== undefined && reply.expiry !== '' ? Number(reply.expiry) : jwtExpiry(token);
    this._set(token, reply.refresh_token ?? '', Number.isFinite(expiry) ? expiry : null, reply.user ?? null, 'user');
    return { ...this._session(), user: this._account };
  }

  /**
   * The app user as the server gave it again (`me`, `update`): kept when it is the
   * signed-in one.
   * @internal
   * @param {any} user
   */
  _userChanged(user) {
    if (this._kind !== 'user' || !user || typeof user !== 'object') return;
    if (this._account && this._account.id !== user.id) return;
    this._set(this._token, this._refreshToken, this._expiry, user, 'user');
  }

  /**
   * Ends an app user's session on the server.
   * @internal
   * @param {string} refreshToken
   * @param {AbortSignal} [signal]
   */
  async _endUserSession(refreshToken, signal) {
    await this._client.send('/users/v1/logout', {
      method: 'POST',
      body: { refresh_token: refreshToken },
      auth: false,
      signal,
    });
  }

  /** Forgets the session here (the server is not told). @internal */
  _clear() {
    this._set('', '', null, null, '');
  }

  /** @private */
  _session() {
    return {
      token: this._token,
      refreshToken: this._refreshToken,
      expiry: this._expiry,
      account: this._account,
      kind: this._kind,
    };
  }

  /**
   * @private
   * @param {string} token @param {string} refreshToken @param {number | null} expiry @param {any} account
   * @param {SessionKind} kind
   */
  _set(token, refreshToken, expiry, account, kind) {
    this._token = token;
    this._refreshToken = refreshToken;
    this._expiry = expiry;
    this._account = account;
    this._kind = kind;
    const session = { token, refreshToken, expiry, account, kind };
    for (const l of this._listeners) {
      try {
        l(session);
      } catch (e) {
        queueMicrotask(() => {
          throw e;
        });
      }
    }
  }

  /**
   * The token to send: refreshed first when it expires within the client's margin.
   * @internal
   * @param {AbortSignal} [signal]
   * @returns {Promise<string>}
   */
  async _fresh(signal) {
    if (this._token && this._refreshToken && this._expiry !== null) {
      if (Date.now() / 1000 >= this._expiry - this._client.refreshMargin) {
        try {
          await this.refresh({ signal });
        } catch (e) {
          // Still usable until it expires: a failed early refresh is not fatal.
          if (!(e instanceof MicroError && e.transient && this._expiry > Date.now() / 1000)) throw e;
        }
      }
    }
    return this._token;
  }
}

// ---------------------------------------------------------------------------------------
// Records

/**
 * @param {string | readonly string[] | undefined} v
 */
function commaList(v) {
  if (v === undefined || v === null) return undefined;
  return typeof v === 'string' ? v : v.join(',');
}

/** @param {unknown} v */
function checkData(v) {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) {
    throw new TypeError('record data must be an object');
  }
  return v;
}

/**
 * The records of one collection.
 * @template {object} T
 */
export class RecordService {
  /** @param {Micro} client @param {string} name */
  constructor(client, name) {
    /** @private */
    this._client = client;
    /** The collection's name. */
    this.name = name;
  }

  /** @internal @param {string} [rest] */
  _path(rest = '') {
    return `/db/v1/${encodeURIComponent(this.name)}${rest}`;
  }

  /**
   * A page of the records the caller may list.
   * @param {{ filter?: string, sort?: string | readonly string[], page?: number, perPage?: number,
   *   total?: boolean, fields?: string | readonly string[], expand?: string | readonly string[],
   *   signal?: AbortSignal }} [options]
   */
  async list(options = {}) {
    const reply = await this._client.send(this._path('/records'), {
      query: {
        filter: options.filter || undefined,
        sort: commaList(options.sort) || undefined,
        page: options.page,
        per_page: options.perPage,
        total: options.total ? true : undefined,
        fields: commaList(options.fields) || undefined,
        expand: commaList(options.expand) || undefined,
      },
      signal: options.signal,
    });
    /** @type {{ items: any[], page: number, perPage: number, total?: number }} */
    const out = { items: reply.items ?? [], page: reply.page, perPage: reply.per_page };
    if (reply.total !== undefined) out.total = reply.total;
    return out;
  }

  /**
   * One record.
   * @param {string} id
   * @param {{ fields?: string | readonly string[], expand?: string | readonly string[], signal?: AbortSignal }} [options]
   */
  async getOne(id, options = {}) {
    return this._client.send(this._path(`/records/${encodeURIComponent(id)}`), {
      query: { fields: commaList(options.fields) || undefined, expand: commaList(options.expand) || undefined },
      signal: options.signal,
    });
  }

  /**
   * Records whose searched fields hold every word of `text`, best first (the
   * collection's spec names the fields: `search`).
   * @param {string} text
   * @param {{ prefix?: boolean, filter?: string, page?: number, perPage?: number,
   *   fields?: string | readonly string[], signal?: AbortSignal }} [options]
   */
  async search(text, options = {}) {
    const reply = await this._client.send(this._path('/search'), {
      query: {
        text,
        prefix: options.prefix ? true : undefined,
        filter: options.filter || undefined,
        page: options.page,
        per_page: options.perPage,
        fields: commaList(options.fields) || undefined,
      },
      signal: options.signal,
    });
    return { items: reply.items ?? [], page: reply.page, perPage: reply.per_page };
  }

  /**
   * Counts, sums, averages, minimums and maximums over the records the caller may list,
   * in groups: each row the group's fields, then each figure as `op` or `op_field`.
   * @param {{ filter?: string, groupBy?: string | readonly string[],
   *   aggregates?: { op: 'count' | 'sum' | 'avg' | 'min' | 'max', field?: string }[], limit?: number,
   *   signal?: AbortSignal }} [options]
   */
  async aggregate(options = {}) {
    const groupBy = options.groupBy === undefined ? [] : typeof options.groupBy === 'string' ? [options.groupBy] : [...options.groupBy];
    const reply = await this._client.send(this._path('/aggregate'), {
      method: 'POST',
      body: { filter: options.filter || undefined, group_by: groupBy, aggregates: options.aggregates, limit: options.limit },
      signal: options.signal,
    });
    return reply.rows ?? [];
  }

  /**
   * Makes a record (with a new id, or `options.id`).
   * @param {object} data
   * @param {{ id?: string, signal?: AbortSignal }} [options]
   */
  async create(data, options = {}) {
    return this._client.send(this._path('/records'), {
      method: 'POST',
      body: { data: checkData(data), id: options.id },
      signal: options.signal,
    });
  }

  /**
   * Changes some fields of a record (a `null` removes one); with `version`, only if the
   * record is still at it (else a 409 MicroError).
   * @param {string} id
   * @param {object} data
   * @param {{ version?: number, signal?: AbortSignal }} [options]
   */
  async update(id, data, options = {}) {
    return this._client.send(this._path(`/records/${encodeURIComponent(id)}`), {
      method: 'PATCH',
      body: { data: checkData(data), version: options.version },
      signal: options.signal,
    });
  }

  /**
   * Replaces a record's fields; with `version`, only if it is still at it.
   * @param {string} id
   * @param {object} data
   * @param {{ version?: number, signal?: AbortSignal }} [options]
   */
  async replace(id, data, options = {}) {
    return this._client.send(this._path(`/records/${encodeURIComponent(id)}`), {
      method: 'PUT',
      body: { data: checkData(data), version: options.version },
      signal: options.signal,
    });
  }

  /**
   * Deletes a record; with `version`, only if it is still at it.
   * @param {string} id
   * @param {{ version?: number, signal?: AbortSignal }} [options]
   * @returns {Promise<void>}
   */
  async delete(id, options = {}) {
    await this._client.send(this._path(`/records/${encodeURIComponent(id)}`), {
      method: 'DELETE',
      query: { version: options.version },
      signal: options.signal,
    });
  }

  /** Writes to send together, all or none: `.create() .update() .replace() .delete()`, then `.send()`. */
  batch() {
    return new Batch(this);
  }

  /**
   * Receives the collection's changes as they commit (those the view rule lets the caller
   * see, and `filter` and `id` select), in order, each once: the subscription reconnects
   * by itself with backoff and resumes after the last cursor it delivered.
   * @param {(event: { action: 'create' | 'update' | 'delete' | 'reset', cursor: number, record?: any }) => void | Promise<void>} callback
   * @param {SubscribeOptions} [options]
   */
  subscribe(callback, options = {}) {
    return new Subscription(this._client, this, callback, options);
  }

  /**
   * @internal
   * @param {{ action: string, id?: string, data?: object, version?: number }[]} writes
   * @param {AbortSignal} [signal]
   */
  async _batch(writes, signal) {
    const reply = await this._client.send(this._path('/batch'), { method: 'POST', body: { writes }, signal });
    return reply.records ?? [];
  }
}

/** Writes to one collection, sent together and applied all or none. */
export class Batch {
  /** @param {RecordService<any>} service */
  constructor(service) {
    /** @private */
    this._service = service;
    /** The writes so far, in order. @type {{ action: string, id?: string, data?: object, version?: number }[]} */
    this.writes = [];
  }

  /** @param {object} data @param {{ id?: string }} [options] */
  create(data, options = {}) {
    this.writes.push({ action: 'create', id: options.id, data: checkData(data) });
    return this;
  }

  /** @param {string} id @param {object} data @param {{ version?: number }} [options] */
  update(id, data, options = {}) {
    this.writes.push({ action: 'update', id, data: checkData(data), version: options.version });
    return this;
  }

  /** @param {string} id @param {object} data @param {{ version?: number }} [options] */
  replace(id, data, options = {}) {
    this.writes.push({ action: 'replace', id, data: checkData(data), version: options.version });
    return this;
  }

  /** @param {string} id @param {{ version?: number }} [options] */
  delete(id, options = {}) {
    this.writes.push({ action: 'delete', id, version: options.version });
    return this;
  }

  /**
   * Sends the writes: every record written, in order (a deleted one as it was), or a
   * MicroError and nothing written.
   * @param {{ signal?: AbortSignal }} [options]
   */
  send(options = {}) {
    return this._service._batch(this.writes, options.signal);
  }
}

// ---------------------------------------------------------------------------------------
// Realtime

/**
 * @typedef {object} SubscribeOptions
 * @property {string} [id] Only this record's changes.
 * @property {string} [filter] Only changes of records that hold this filter.
 * @property {number} [cursor] Resume after this cursor (the last event's).
 * @property {(error: MicroError, info: { retrying: boolean, attempt: number, delay: number }) => void} [onError]
 *   Each error: `retrying` tells whether the subscription goes on (after `delay` ms) or has ended.
 * @property {(cursor: number) => void} [onSubscribed] Each time the server confirms the subscription.
 * @property {{ initial?: number, max?: number }} [backoff] Reconnection delays, ms (default 250 doubling to 10000).
 */

/**
 * A stream of server-sent events that reconnects (with backoff) until it is closed or
 * the server refuses it for good; a 401 refreshes the token once. Its kinds implement
 * `_connect()` (one connection, until it ends or breaks) and call `_confirmed(value)`
 * when the server confirms it.
 */
class Reconnecting {
  /**
   * @param {Micro} client
   * @param {{ onError?: (error: MicroError, info: { retrying: boolean, attempt: number, delay: number }) => void,
   *   backoff?: { initial?: number, max?: number } }} options
   */
  constructor(client, options) {
    /** @protected */
    this._client = client;
    /** @protected */
    this._options = options;
    /** Whether it has ended (closed, or a fatal error). */
    this.closed = false;
    /** @protected @type {AbortController | null} */
    this._abort = null;
    /** @private @type {(() => void) | null} */
    this._wake = null;
    /** @private @type {ReturnType<typeof setTimeout> | null} */
    this._timer = null;
    /** @private */
    this._attempt = 0;
    /** @private: whether the token was refreshed for a 401 since the last confirmation */
    this._refreshed = false;
    /** @private @type {(value: any) => void} */
    this._resolve = () => {};
    /** @private @type {(e: unknown) => void} */
    this._reject = () => {};
    /**
     * Settles when the server first confirms the stream, or rejects when it ends before.
     * @type {Promise<any>}
     */
    this.ready = new Promise((resolve, reject) => {
      this._resolve = resolve;
      this._reject = reject;
    });
    this.ready.catch(() => {}); // not an unhandled rejection when nobody waits on it
  }

  /** @protected: starts the loop (once the subclass is set up). */
  _start() {
    this._run();
  }

  /** Ends the stream (the connection closes; no more callbacks). */
  close() {
    if (this.closed) return;
    this.closed = true;
    this._abort?.abort();
    if (this._timer) clearTimeout(this._timer);
    this._wake?.();
    this._reject(new MicroError({ status: 0, detail: 'closed', id: 'client' }));
  }

  /** @protected @param {any} value: the server confirmed the stream. */
  _confirmed(value) {
    this._attempt = 0;
    this._refreshed = false;
    this._resolve(value);
  }

  /** @protected: one connection, until it ends or breaks. */
  async _connect() {}

  /** @private */
  async _run() {
    while (!this.closed) {
      /** @type {MicroError} */
      let error;
      try {
        await this._connect();
        if (this.closed) return;
        error = new MicroError({ status: 0, detail: 'the stream ended', id: 'client' });
      } catch (e) {
        if (this.closed) return;
        error =
          e instanceof MicroError
            ? e
            : new MicroError({ status: 0, detail: `the stream broke: ${/** @type {any} */ (e)?.message ?? e}`, id: 'client', cause: e });
      }
      let retrying = error.transient;
      let delay = retrying ? this._delay() : 0;
      if (error.status === 401 && !this._refreshed && this._client.auth.refreshToken) {
        // An expired token: refresh once, then try at once.
        this._refreshed = true;
        try {
          await this._client.auth.refresh();
          retrying = true;
          delay = 0;
        } catch {
          retrying = false;
        }
      }
      this._options.onError?.(error, { retrying, attempt: this._attempt, delay });
      if (!retrying) {
        this.closed = true;
        this._reject(error);
        return;
      }
      this._attempt++;
      if (delay > 0) await this._sleep(delay);
    }
  }

  /** @private */
  _delay() {
    const initial = this._options.backoff?.initial ?? 250;
    const max = this._options.backoff?.max ?? 10_000;
    const base = Math.min(max, initial * 2 ** Math.min(this._attempt, 30));
    return Math.round(base * (0.75 + Math.random() * 0.5));
  }

  /** @private @param {number} ms */
  _sleep(ms) {
    return new Promise((resolve) => {
      this._wake = () => {
        this._wake = null;
        if (this._timer) clearTimeout(this._timer);
        this._timer = null;
        resolve(undefined);
      };
      this._timer = setTimeout(() => this._wake?.(), ms);
    });
  }
}

/** A live subscription: `unsubscribe()` ends it; `cursor` is where to resume. */
export class Subscription extends Reconnecting {
  /**
   * @param {Micro} client
   * @param {RecordService<any>} service
   * @param {(event: any) => void | Promise<void>} callback
   * @param {SubscribeOptions} options
   */
  constructor(client, service, callback, options) {
    if (typeof callback !== 'function') throw new TypeError('subscribe: the callback must be a function');
    super(client, options);
    /** @private */
    this._service = service;
    /** @private */
    this._callback = callback;
    /** The cursor of the last event delivered (or of the subscription's start). @type {number | undefined} */
    this.cursor = options.cursor;
    /** @type {Promise<number>} */
    this.ready;
    this.unsubscribe = this.unsubscribe.bind(this);
    this._start();
  }

  /** Ends the subscription (the connection closes; no more callbacks). */
  unsubscribe() {
    if (this.closed) return;
    this.close();
  }

  /** @private: one connection, until it ends or breaks. */
  async _connect() {
    const abort = new AbortController();
    this._abort = abort;
    const o = this._options;
    const res = await this._client.request(this._service._path('/subscribe'), {
      query: { filter: o.filter || undefined, id: o.id, cursor: this.cursor },
      signal: abort.signal,
      accept: 'text/event-stream',
    });
    if (!res.body) throw new MicroError({ status: 0, detail: 'the subscription has no body', id: 'client' });
    for await (const ev of readEventStream(res.body)) {
      if (this.closed) return;
      /** @type {any} */
      let msg;
      if (ev.event === 'error') {
        throw errorOf(Number(safeJSON(ev.data)?.code) || 500, '', ev.data);
      }
      if (ev.event !== 'message') continue;
      msg = safeJSON(ev.data);
      if (!msg || typeof msg.action !== 'string') continue;
      if (msg.action === 'subscribed') {
        if (typeof msg.cursor === 'number' && (this.cursor === undefined || msg.cursor > this.cursor)) {
          this.cursor = msg.cursor;
        }
        this._confirmed(/** @type {number} */ (this.cursor));
        o.onSubscribed?.(/** @type {number} */ (this.cursor));
        continue;
      }
      // Each change once: one at or before the cursor was delivered already.
      if (typeof msg.cursor === 'number') {
        if (this.cursor !== undefined && msg.cursor <= this.cursor) continue;
        this.cursor = msg.cursor;
      }
      try {
        await this._callback(msg);
      } catch (e) {
        // The callback's error is its own: reported, the subscription goes on.
        queueMicrotask(() => {
          throw e;
        });
      }
      // The collection was deleted: what the subscriber holds is gone, and so is the
      // subscription.
      if (msg.action === 'reset') {
        this.unsubscribe();
        return;
      }
    }
  }
}

/** @param {string} text */
function safeJSON(text) {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

// ---------------------------------------------------------------------------------------
// Collections

/** The namespace's collections (managed by its admins and developers). */
export class CollectionService {
  /** @param {Micro} client */
  constructor(client) {
    /** @private */
    this._client = client;
  }

  /** Every collection, by name. @param {{ signal?: AbortSignal }} [options] */
  async list(options = {}) {
    const reply = await this._client.send('/db/v1/collections', { signal: options.signal });
    return reply.collections ?? [];
  }

  /** One collection. @param {string} name @param {{ signal?: AbortSignal }} [options] */
  async get(name, options = {}) {
    return this._client.send(`/db/v1/collections/${encodeURIComponent(name)}`, { signal: options.signal });
  }

  /**
   * Makes or changes a collection: its schema (null: any object), rules (each null:
   * locked, "": anyone, or a filter), fields to rename and to drop.
   * @param {{ name: string, schema?: object[] | null, rules?: object, rename?: Record<string, string>, drop?: string[] }} spec
   * @param {{ signal?: AbortSignal }} [options]
   */
  async save(spec, options = {}) {
    return this._client.send('/db/v1/collections', { method: 'POST', body: spec, signal: options.signal });
  }

  /** Deletes a collection and its records. @param {string} name @param {{ signal?: AbortSignal }} [options] */
  async delete(name, options = {}) {
    await this._client.send(`/db/v1/collections/${encodeURIComponent(name)}`, {
      method: 'DELETE',
      signal: options.signal,
    });
  }
}

// ---------------------------------------------------------------------------------------
// App users

/**
 * @typedef {{ id: string, email: string, name: string, verified: boolean,
 *   data: Record<string, unknown>, created: number, updated: number }} AppUser
 * @typedef {{ id: string, created: number, used: number, expires: number, address: string }} UserSession
 */

/** A 401 of the users service itself (a wrong password) is its answer: no refresh cures it. */
const notUsers401 = (/** @type {MicroError} */ e) => e.id !== 'users';

/**
 * The namespace's app users (`/users/v1/…`): the end users of the app sign up, confirm
 * their email with a mailed code, sign in (with a password or a mailed code), keep a
 * profile and sessions; the namespace's managers list and delete them and keep the
 * settings. The calls that sign in (`login`, `verify`, `loginWithCode`, `reset`,
 * `changePassword`) put the app user's session in `micro.auth` (`auth.kind === 'user'`,
 * `auth.user`), which then refreshes through `/users/v1/refresh`.
 */
/** Where a browser tab keeps the state of the provider sign-in it started. */
const OAUTH_STATE = 'micro.users.oauth.state';

/** The tab's session storage, where there is one (browsers; not Node.js). */
function oauthStates() {
  try {
    return globalThis.sessionStorage ?? null;
  } catch {
    return null;
  }
}

export class Users {
  /** @param {Micro} client */
  constructor(client) {
    /** @private */
    this._client = client;
  }

  /**
   * The signed-in session's id (as `sessions()` lists it), "" when no app user is signed in.
   * @returns {string}
   */
  get sessionId() {
    const auth = this._client.auth;
    if (auth.kind !== 'user') return '';
    return auth.refreshToken.split('.')[1] ?? '';
  }

  /**
   * A public call (no token: the namespace is the app's).
   * @private @param {string} path @param {object} body @param {AbortSignal} [signal]
   */
  _public(path, body, signal) {
    return this._client.send(path, { method: 'POST', body, auth: false, signal });
  }

  /**
   * A call of the signed-in app user (or manager); with `password`, one whose own 401 (a
   * wrong password) is final: only the gateway's (a stale token) refreshes and retries.
   * @private @param {string} path
   * @param {{ method?: string, body?: unknown, query?: Record<string, unknown>, signal?: AbortSignal,
   *   password?: boolean }} [options]
   */
  _own(path, options = {}) {
    const { password, ...rest } = options;
    return this._client.send(path, password ? { ...rest, refreshOn401: notUsers401 } : rest);
  }

  /**
   * Signs up: a code to confirm the address is mailed (then `verify`). It does not sign
   * in, and answers the same whether or not the address had a user.
   * @param {{ email: string, password: string, name?: string, data?: Record<string, unknown> }} user
   * @param {{ signal?: AbortSignal }} [options]
   * @returns {Promise<{ message: string }>}
   */
  async signup(user, options = {}) {
    const { email, password, name, data } = user ?? {};
    return this._public('/users/v1/signup', { email, password, name, data }, options.signal);
  }

  /**
   * Signs in with the email address and password.
   * @param {string} email
   * @param {string} password
   * @param {{ signal?: AbortSignal }} [options]
   */
  async login(email, password, options = {}) {
    return this._client.auth._tookUser(await this._public('/users/v1/login', { email, password }, options.signal));
  }

  /**
   * Confirms the address with the mailed code: the user is verified and signed in.
   * Pass the password chosen at signup to keep it; without it the address is confirmed
   * but no password works until a reset (the code proves the mailbox, not who chose
   * the password).
   * @param {string} email
   * @param {string} code
   * @param {{ password?: string, signal?: AbortSignal }} [options]
   */
  async verify(email, code, options = {}) {
    const body = { email, code };
    if (options.password !== undefined) body.password = options.password;
    return this._client.auth._tookUser(await this._public('/users/v1/verify', body, options.signal));
  }

  /**
   * Mails a new code to confirm the address (when it has an unconfirmed user).
   * @param {string} email
   * @param {{ signal?: AbortSignal }} [options]
   * @returns {Promise<{ message: string }>}
   */
  async requestVerification(email, options = {}) {
    return this._public('/users/v1/verification', { email }, options.signal);
  }

  /**
   * Mails a code to reset a forgotten password (then `reset`).
   * @param {string} email
   * @param {{ signal?: AbortSignal }} [options]
   * @returns {Promise<{ message: string }>}
   */
  async requestReset(email, options = {}) {
    return this._public('/users/v1/reset', { email }, options.signal);
  }

  /**
   * Sets a new password with the mailed code: every other session ends, and the user is
   * signed in (and verified: the code proves the address).
   * @param {string} email
   * @param {string} code
   * @param {string} password the new password
   * @param {{ signal?: AbortSignal }} [options]
   */
  async reset(email, code, password, options = {}) {
    const reply = await this._public('/users/v1/reset/confirm', { email, code, password }, options.signal);
    return this._client.auth._tookUser(reply);
  }

  /**
   * Mails a one-time sign-in code (then `loginWithCode`; a magic link when the
   * namespace's settings give the app's `link_url`).
   * @param {string} email
   * @param {{ signal?: AbortSignal }} [options]
   * @returns {Promise<{ message: string }>}
   */
  async requestCode(email, options = {}) {
    return this._public('/users/v1/code', { email }, options.signal);
  }

  /**
   * Signs in with a mailed code (which also confirms the address).
   * @param {string} email
   * @param {string} code
   * @param {{ signal?: AbortSignal }} [options]
   */
  async loginWithCode(email, code, options = {}) {
    return this._client.auth._tookUser(await this._public('/users/v1/code/login', { email, code }, options.signal));
  }

  /**
   * Starts signing in through an OpenID Connect provider of the namespace's settings:
   * returns the provider's URL to send the browser to (`location.assign(url)`) and the
   * flow's `state`. `redirectUrl` must be exactly one of the provider's `redirect_urls`
   * (the page that calls `oauthFinish`).
   * @param {string} provider
   * @param {string} redirectUrl
   * @param {{ signal?: AbortSignal }} [options]
   * @returns {Promise<{ url: string, state: string }>}
   */
  async oauthStart(provider, redirectUrl, options = {}) {
    const started = await this._public('/users/v1/oauth/start', { provider, redirect_url: redirectUrl }, options.signal);
    // The state stays with this browser tab: `oauthFinish` refuses a callback whose state
    // this tab did not start (someone else's sign-in handed over in a link).
    oauthStates()?.setItem(OAUTH_STATE, started.state);
    return started;
  }

  /**
   * Finishes a provider's sign-in on the page it sent the browser back to, with the
   * `state` and `code` of that page's query (a URL, its search string, or both given).
   * @param {string | { state: string, code: string }} from `location.href`, or the two values
   * @param {{ signal?: AbortSignal }} [options]
   */
  async oauthFinish(from, options = {}) {
    let state;
    let code;
    if (typeof from === 'string') {
      const q = new URL(from, 'http://localhost').searchParams;
      state = q.get('state') ?? '';
      code = q.get('code') ?? '';
    } else {
      ({ state, code } = from);
    }
    const states = oauthStates();
    if (states) {
      const started = states.getItem(OAUTH_STATE);
      states.removeItem(OAUTH_STATE);
      if (started !== state) {
        throw new MicroError({ status: 400, detail: 'this sign-in was not started in this browser tab: start again', id: 'client' });
      }
    }
    return this._client.auth._tookUser(await this._public('/users/v1/oauth/finish', { state, code }, options.signal));
  }

  /**
   * The signed-in user, as kept now.
   * @param {{ signal?: AbortSignal }} [options]
   * @returns {Promise<AppUser>}
   */
  async me(options = {}) {
    const user = await this._own('/users/v1/me', { signal: options.signal });
    this._client.auth._userChanged(user);
    return user;
  }

  /**
   * Changes the signed-in user's name and profile fields (`data` is replaced whole);
   * what is not given stays.
   * @param {{ name?: string, data?: Record<string, unknown> }} changes
   * @param {{ signal?: AbortSignal }} [options]
   * @returns {Promise<AppUser>}
   */
  async update(changes, options = {}) {
    const { name, data } = changes ?? {};
    const user = await this._own('/users/v1/me', { method: 'PATCH', body: { name, data }, signal: options.signal });
    this._client.auth._userChanged(user);
    return user;
  }

  /**
   * Changes the password: every session ends (this one too) and a new one is signed in.
   * @param {string} password the current password
   * @param {string} newPassword
   * @param {{ signal?: AbortSignal }} [options]
   */
  async changePassword(password, newPassword, options = {}) {
    const reply = await this._own('/users/v1/me/password', {
      method: 'POST',
      body: { password, new_password: newPassword },
      signal: options.signal,
      password: true,
    });
    return this._client.auth._tookUser(reply);
  }

  /**
   * The signed-in user's sessions (signed-in devices and browsers), newest first; this
   * one's id is `sessionId`.
   * @param {{ signal?: AbortSignal }} [options]
   * @returns {Promise<UserSession[]>}
   */
  async sessions(options = {}) {
    const reply = await this._own('/users/v1/me/sessions', { signal: options.signal });
    return reply?.sessions ?? [];
  }

  /**
   * Ends one of the user's sessions: its refresh token stops, and the user's access
   * tokens are voided (the other sessions refresh by themselves). Ending this one signs
   * the client out.
   * @param {string} id
   * @param {{ signal?: AbortSignal }} [options]
   * @returns {Promise<void>}
   */
  async endSession(id, options = {}) {
    const current = this.sessionId;
    await this._own(`/users/v1/me/sessions/${encodeURIComponent(id)}`, { method: 'DELETE', signal: options.signal });
    if (current && id === current && this.sessionId === current) this._client.auth._clear();
  }

  /**
   * Everything kept about the signed-in user: the user and their sessions.
   * @param {{ signal?: AbortSignal }} [options]
   * @returns {Promise<{ user: AppUser, sessions: UserSession[] }>}
   */
  async export(options = {}) {
    const reply = await this._own('/users/v1/me/export', { signal: options.signal });
    return { user: reply?.user ?? null, sessions: reply?.sessions ?? [] };
  }

  /**
   * Deletes the signed-in user and everything kept about them (their password again
   * proves it is them); the client is signed out.
   * @param {string} password
   * @param {{ signal?: AbortSignal }} [options]
   * @returns {Promise<void>}
   */
  async deleteMe(password, options = {}) {
    const id = this._client.auth.user?.id;
    await this._own('/users/v1/me/delete', { method: 'POST', body: { password }, signal: options.signal, password: true });
    const auth = this._client.auth;
    if (auth.kind === 'user' && (!id || auth.user?.id === id)) auth._clear();
  }

  /**
   * Signs out: the session ends on the server (`POST /users/v1/logout` with its refresh
   * token) and the client forgets the tokens (at once, even when the server cannot be
   * told: then this rejects). A platform account's session is only forgotten.
   * @param {{ signal?: AbortSignal }} [options]
   * @returns {Promise<void>}
   */
  async logout(options = {}) {
    const auth = this._client.auth;
    const kind = auth.kind;
    const refreshToken = auth.refreshToken;
    auth._clear();
    if (kind === 'user' && refreshToken) await auth._endUserSession(refreshToken, options.signal);
  }

  // Managers: the namespace's admins, developers and data accounts (signed in with
  // `micro.auth.login`).

  /**
   * A page of the namespace's app users, by id (managers).
   * @param {{ page?: number, perPage?: number, signal?: AbortSignal }} [options]
   * @returns {Promise<{ items: AppUser[], page: number, perPage: number }>}
   */
  async list(options = {}) {
    const reply = await this._own('/users/v1/users', {
      query: { page: options.page, per_page: options.perPage },
      signal: options.signal,
    });
    return { items: reply?.users ?? [], page: reply?.page, perPage: reply?.per_page };
  }

  /**
   * One app user (managers).
   * @param {string} id
   * @param {{ signal?: AbortSignal }} [options]
   * @returns {Promise<AppUser>}
   */
  async get(id, options = {}) {
    return this._own(`/users/v1/users/${encodeURIComponent(id)}`, { signal: options.signal });
  }

  /**
   * Deletes an app user and everything kept about them; their tokens stop (managers).
   * @param {string} id
   * @param {{ signal?: AbortSignal }} [options]
   * @returns {Promise<void>}
   */
  async delete(id, options = {}) {
    await this._own(`/users/v1/users/${encodeURIComponent(id)}`, { method: 'DELETE', signal: options.signal });
  }

  /**
   * The namespace's settings for its app users (the defaults while app users are off)
   * (managers).
   * @param {{ signal?: AbortSignal }} [options]
   */
  async settings(options = {}) {
    return this._own('/users/v1/settings', { signal: options.signal });
  }

  /**
   * Saves the namespace's settings, whole (what is left out takes its default): saving
   * them turns app users on (managers). The settings as saved.
   * @param {object} settings
   * @param {{ signal?: AbortSignal }} [options]
   */
  async saveSettings(settings, options = {}) {
    return this._own('/users/v1/settings', { method: 'POST', body: settings ?? {}, signal: options.signal });
  }
}

// ---------------------------------------------------------------------------------------
// Files

/**
 * @typedef {{ id: string, name: string, size: number, type: string, public: boolean,
 *   owner: string, owner_kind: 'user' | 'account', sha256: string, created: number,
 *   record?: string, url: string }} FileInfo
 * @typedef {{ app_uploads: boolean, max_file_size: number, max_total: number, types: string[] }} FilesSettings
 * @typedef {{ loaded: number, total: number }} UploadProgress
 */

/** The largest file uploaded in one request (a multipart form); larger ones go in chunks. */
const FORM_MAX = 8 << 20;

/** The size of a resumable upload's chunks (at most the server's `chunk`). */
const CHUNK = 4 << 20;

/** How many times a chunk (or the lookup of where the upload is) is tried again. */
const CHUNK_RETRIES = 5;

/**
 * What to upload as a Blob: a Blob or File as it is (of `type` when given), bytes as a
 * Blob of `type`.
 * @param {Blob | ArrayBuffer | ArrayBufferView} file
 * @param {string} [type]
 * @returns {Blob}
 */
function blobOf(file, type) {
  if (typeof Blob !== 'undefined' && file instanceof Blob) {
    return type === undefined || type === file.type ? file : file.slice(0, file.size, type);
  }
  if (file instanceof ArrayBuffer || ArrayBuffer.isView(file)) {
    return new Blob([/** @type {BlobPart} */ (file)], type === undefined ? undefined : { type });
  }
  throw new TypeError('files.upload: the file is a Blob, a File or bytes (an ArrayBuffer or a Uint8Array)');
}

/**
 * `?thumb=` of a thumbnail's size: `'200x150'`, or `200` for a square.
 * @param {string | number | undefined} thumb
 */
function thumbOf(thumb) {
  if (thumb === undefined || thumb === null || thumb === '') return '';
  if (typeof thumb === 'number') return `${thumb}x${thumb}`;
  return String(thumb);
}

/**
 * A `Range` header: `'bytes=0-99'` (or `'0-99'`), `[first, last]` (inclusive), `[first]`
 * (to the end), or `[-n]` (the last n bytes).
 * @param {string | readonly number[] | undefined} range
 */
function rangeOf(range) {
  if (range === undefined || range === null) return '';
  if (typeof range === 'string') return range.startsWith('bytes=') ? range : `bytes=${range}`;
  const [first, last] = range;
  if (!Number.isInteger(first) || (last !== undefined && !Number.isInteger(last))) {
    throw new TypeError('files.fetch: range is [first, last?] (whole numbers), [-n], or a string');
  }
  if (first < 0) return `bytes=${first}`;
  return `bytes=${first}-${last ?? ''}`;
}

/**
 * Waits `ms`, or rejects with the signal's reason when it aborts first.
 * @param {number} ms
 * @param {AbortSignal} [signal]
 * @returns {Promise<void>}
 */
function pause(ms, signal) {
  return new Promise((resolve, reject) => {
    const aborted = () => signal?.reason ?? new DOMException('the operation was aborted', 'AbortError');
    if (signal?.aborted) return reject(aborted());
    const onAbort = () => {
      clearTimeout(timer);
      reject(aborted());
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/**
 * The namespace's files (`/files/v1/…`): uploaded by its team, and by its app users when
 * its settings let them (`app_uploads`); served with range requests, as thumbnails of
 * images, and (a private file) to its owner, the team, whoever may see the record it is
 * attached to, or anybody holding a signed URL. A file as the server gives it
 * (`FileInfo`) has `url`, where its content is, relative to the API: `url(file)` makes it
 * absolute, `fetch(file)` downloads it with the client's token.
 */
export class Files {
  /** @param {Micro} client */
  constructor(client) {
    /** @private */
    this._client = client;
  }

  /**
   * Uploads a file: up to 8 MiB in one request (a multipart form), a larger one in
   * resumable chunks of 4 MiB (`/files/v1/uploads`), each tried again from where the
   * server is after a conflict (409) or a failure of the network or the server (up to 5
   * times in a row). Resolves to the file as stored: its type is what its content tells
   * (a declared type is trusted only for text, and an image must be one). An upload that
   * fails (or is aborted) midway is cancelled.
   * @param {Blob | ArrayBuffer | ArrayBufferView} file a Blob or File (browsers), a Blob or bytes (Node.js)
   * @param {{ name?: string, type?: string, public?: boolean, record?: string, signal?: AbortSignal,
   *   onProgress?: (progress: UploadProgress) => void }} [options] `name`: the file's (default:
   *   the File's name, else `file`); `type`: the content type to declare (default: the
   *   Blob's); `public`: anybody may read it; `record`: the database record
   *   (`collection/id`) it is attached to (the caller may change it; the file is seen by
   *   whoever may see it and deleted with it); `onProgress`: the bytes sent so far (for a
   *   form, only at its start and end)
   * @returns {Promise<FileInfo>}
   */
  async upload(file, options = {}) {
    const blob = blobOf(file, options.type);
    const given = /** @type {any} */ (file)?.name;
    const name = options.name ?? (typeof given === 'string' ? given : '');
    if (blob.size > FORM_MAX) return this._resumable(blob, name, options);
    const total = blob.size;
    options.onProgress?.({ loaded: 0, total });
    // The server reads the fields before the file.
    const form = new FormData();
    if (name) form.append('name', name);
    if (options.public) form.append('public', 'true');
    if (options.record) form.append('record', options.record);
    form.append('file', blob, name || 'file');
    // Sent whole, not streamed: a server that refuses the upload before reading it (a bad
    // name, no right to upload) answers and closes, and a client still writing a streamed
    // form then meets a broken pipe instead of the answer.
    const encoded = new Response(form);
    const type = encoded.headers.get('content-type') ?? '';
    const stored = await this._client.send('/files/v1/files', {
      method: 'POST',
      raw: await encoded.blob(),
      headers: type ? { 'Content-Type': type } : undefined,
      signal: options.signal,
    });
    options.onProgress?.({ loaded: total, total });
    return stored;
  }

  /**
   * A resumable upload of `blob`, chunk by chunk.
   * @private
   * @param {Blob} blob
   * @param {string} name
   * @param {{ public?: boolean, record?: string, signal?: AbortSignal,
   *   onProgress?: (progress: UploadProgress) => void }} options
   * @returns {Promise<FileInfo>}
   */
  async _resumable(blob, name, options) {
    const { signal } = options;
    const total = blob.size;
    const started = await this._client.send('/files/v1/uploads', {
      method: 'POST',
      body: {
        name: name || undefined,
        size: total,
        type: blob.type || undefined,
        public: options.public ? true : undefined,
        record: options.record || undefined,
      },
      signal,
    });
    const path = `/files/v1/uploads/${encodeURIComponent(started.id)}`;
    const chunk = Math.max(1, Math.min(CHUNK, Number(started.chunk) || CHUNK));
    /** Where the server is: null when it is to be asked (after a failure). @type {number | null} */
    let offset = Number(started.offset) || 0;
    let failures = 0;
    let reported = -1;
    /** @param {number} loaded */
    const progress = (loaded) => {
      if (loaded !== reported) options.onProgress?.({ loaded, total });
      reported = loaded;
    };
    try {
      for (;;) {
        try {
          if (offset === null) {
            const at = await this._client.send(path, { signal });
            // Finished already (the last chunk arrived, its answer was lost): its file.
            if (at?.file) {
              progress(total);
              return at.file;
            }
            offset = Number(at?.offset);
          }
          if (!Number.isInteger(offset) || offset < 0 || offset >= total) {
            throw new MicroError({ status: 0, detail: `the upload is at offset ${offset} of ${total}: not one to send from`, id: 'client' });
          }
          progress(offset);
          const last = Math.min(offset + chunk, total) - 1;
          const reply = await this._client.send(path, {
            method: 'PUT',
            raw: blob.slice(offset, last + 1),
            headers: { 'Content-Type': 'application/octet-stream', 'Content-Range': `bytes ${offset}-${last}/${total}` },
            signal,
          });
          failures = 0;
          if (reply?.file) {
            progress(total);
            return reply.file;
          }
          offset = Number(reply?.offset);
        } catch (e) {
          const again = e instanceof MicroError && (e.status === 409 || e.transient) && !signal?.aborted;
          if (!again || ++failures > CHUNK_RETRIES) throw e;
          // A conflict: the server is elsewhere (a chunk arrived whose answer was lost): at
          // once. A failure: after a while.
          if (e.status !== 409) await pause(Math.min(4000, 250 * 2 ** (failures - 1)), signal);
          offset = null;
        }
      }
    } catch (e) {
      this._client.send(path, { method: 'DELETE' }).catch(() => {});
      throw e;
    }
  }

  /**
   * The files the caller may see: an app user their own, the team every file of the
   * namespace (newest first); or those attached to a record, for whoever may see it.
   * @param {{ record?: string, owner?: string, signal?: AbortSignal }} [options] `record`:
   *   `collection/id`; `owner`: only this owner's (an app user's id or an account's)
   * @returns {Promise<FileInfo[]>}
   */
  async list(options = {}) {
    const reply = await this._client.send('/files/v1/files', {
      query: { record: options.record || undefined, owner: options.owner || undefined },
      signal: options.signal,
    });
    return reply?.files ?? [];
  }

  /**
   * One file (a 404 MicroError when there is none or the caller may not see it).
   * @param {string} id
   * @param {{ signal?: AbortSignal }} [options]
   * @returns {Promise<FileInfo>}
   */
  async get(id, options = {}) {
    return this._client.send(`/files/v1/files/${encodeURIComponent(id)}`, { signal: options.signal });
  }

  /**
   * Deletes a file: its content, its thumbnails and its signed URLs go (its owner or the
   * team).
   * @param {string} id
   * @param {{ signal?: AbortSignal }} [options]
   * @returns {Promise<void>}
   */
  async remove(id, options = {}) {
    await this._client.send(`/files/v1/files/${encodeURIComponent(id)}`, { method: 'DELETE', signal: options.signal });
  }

  /**
   * A URL that lets anybody read the file (a private one too) until it expires, absolute
   * (its owner or the team ask for it).
   * @param {string} id
   * @param {number} [expiresIn] seconds, 1 to 7 days' (default: an hour)
   * @param {{ signal?: AbortSignal }} [options]
   * @returns {Promise<string>}
   */
  async signedUrl(id, expiresIn, options = {}) {
    const reply = await this._client.send(`/files/v1/files/${encodeURIComponent(id)}/url`, {
      method: 'POST',
      body: { expires_in: expiresIn },
      signal: options.signal,
    });
    return this.url(reply.url);
  }

  /**
   * The absolute URL of a file's content (or of its thumbnail, `thumb: '200x150'` or
   * `200`: an image fitting that box, its aspect kept): for a public file, anybody's
   * (an `<img src>`); a private one needs the token (`fetch`) or a signed URL.
   * @param {FileInfo | string} file a file, or its `url`
   * @param {{ thumb?: string | number }} [options]
   * @returns {string}
   */
  url(file, options = {}) {
    const path = typeof file === 'string' ? file : file?.url;
    if (typeof path !== 'string' || !path) {
      throw new TypeError('files.url: a file (as upload, get or list give it) or its url');
    }
    let url = /^https?:\/\//i.test(path) ? path : this._client.url + (path.startsWith('/') ? path : '/' + path);
    const thumb = thumbOf(options.thumb);
    if (thumb) url += (url.includes('?') ? '&' : '?') + 'thumb=' + encodeURIComponent(thumb);
    return url;
  }

  /**
   * Downloads a file's content with the client's token (so a private file of the caller
   * works too): the response (`await res.blob()`, `res.arrayBuffer()`, its
   * `Content-Type`), 206 with `Content-Range` for a range; a MicroError otherwise (404
   * when there is no such file or the caller may not read it, 416 for a range past its
   * end).
   * @param {FileInfo | string} file a file, or its `url` (a signed one too)
   * @param {{ range?: string | readonly number[], thumb?: string | number, signal?: AbortSignal }} [options]
   *   `range`: `[first, last]` (inclusive), `[first]` (to the end), `[-n]` (the last n
   *   bytes) or `'bytes=0-99'`; `thumb`: a thumbnail of an image (see `url`)
   * @returns {Promise<Response>}
   */
  async fetch(file, options = {}) {
    const url = this.url(file, { thumb: options.thumb });
    const base = this._client.url;
    if (!url.startsWith(base + '/')) {
      throw new TypeError(`files.fetch: ${url} is not of this client's server (${base})`);
    }
    /** @type {Record<string, string>} */
    const headers = {};
    const range = rangeOf(options.range);
    if (range) headers.Range = range;
    return this._client.request(url.slice(base.length), { accept: '*/*', headers, signal: options.signal });
  }

  /**
   * The namespace's files settings (its team).
   * @param {{ signal?: AbortSignal }} [options]
   * @returns {Promise<FilesSettings>}
   */
  async settings(options = {}) {
    return this._client.send('/files/v1/settings', { signal: options.signal });
  }

  /**
   * Saves the namespace's files settings, whole (what is left out takes its default:
   * app users may not upload, 10 MiB a file, 1 GiB in all, any type) (its admins). The
   * settings as saved.
   * @param {Partial<FilesSettings>} settings
   * @param {{ signal?: AbortSignal }} [options]
   * @returns {Promise<FilesSettings>}
   */
  async saveSettings(settings, options = {}) {
    return this._client.send('/files/v1/settings', { method: 'POST', body: settings ?? {}, signal: options.signal });
  }
}

// ---------------------------------------------------------------------------------------
// The client

// ---------------------------------------------------------------------------------------
// Mailing lists

/**
 * The namespace's mailing lists, as a visitor meets them: a subscription with double
 * opt-in (the list's team manages lists and campaigns with the CLI or the dashboard).
 */
export class Lists {
  /** @param {Micro} client */
  constructor(client) {
    /** @private */
    this._client = client;
  }

  /**
   * Subscribes `email` to `list`: the address gets a mail with a link to confirm it
   * (unless the list has no double opt-in). Answers the same whatever the address's state.
   * @param {string} list
   * @param {{ email: string, name?: string, signal?: AbortSignal }} who
   * @returns {Promise<string>} What to tell the visitor.
   */
  async subscribe(list, who) {
    if (!this._client.namespace) throw new TypeError('lists.subscribe: the client needs its namespace');
    if (!who || typeof who.email !== 'string') throw new TypeError('lists.subscribe: an email');
    const path = `/subscribe/v1/${encodeURIComponent(this._client.namespace)}/lists/${encodeURIComponent(list)}/subscribe`;
    const body = { email: who.email };
    if (who.name) body.name = who.name;
    const reply = await this._client.send(path, { method: 'POST', body, auth: false, signal: who.signal });
    return reply?.message ?? '';
  }
}

// ---------------------------------------------------------------------------------------
// Push notifications

/**
 * A notification as the server sends it (to a browser's service worker, encrypted, and
 * to `push.listen`).
 * @typedef {object} Notification
 * @property {string} id The message's id (for `push.receipt`).
 * @property {string} title
 * @property {string} body
 * @property {string} [url] Where a click leads.
 * @property {any} [data] Anything else the sender gave.
 * @property {string} receipt The user's token for `push.receipt`.
 */

/**
 * What `push.listen` takes.
 * @typedef {object} ListenOptions
 * @property {string[]} [topics] Topics to hear besides those the user's subscriptions follow.
 * @property {boolean} [receipts] Report `delivered` for each notification (default true).
 * @property {(error: MicroError, info: { retrying: boolean, attempt: number, delay: number }) => void} [onError]
 *   Each error: `retrying` tells whether the stream goes on (after `delay` ms) or has ended.
 * @property {{ initial?: number, max?: number }} [backoff] Reconnection delays, ms (default 250 doubling to 10000).
 */

/** The realtime notifications of the signed-in user: `close()` ends them. */
export class PushListener extends Reconnecting {
  /**
   * @param {Micro} client
   * @param {(n: Notification) => void | Promise<void>} callback
   * @param {ListenOptions} options
   */
  constructor(client, callback, options) {
    if (typeof callback !== 'function') throw new TypeError('push.listen: the callback must be a function');
    super(client, options);
    /** @private */
    this._callback = callback;
    /** @type {Promise<void>} */
    this.ready;
    this.close = this.close.bind(this);
    this._start();
  }

  /** @protected */
  async _connect() {
    const abort = new AbortController();
    this._abort = abort;
    const topics = this._options.topics ?? [];
    const res = await this._client.request('/push/v1/events', {
      query: { topics: topics.length ? topics.join(',') : undefined },
      signal: abort.signal,
      accept: 'text/event-stream',
    });
    if (!res.body) throw new MicroError({ status: 0, detail: 'the stream has no body', id: 'client' });
    for await (const ev of readEventStream(res.body)) {
      if (this.closed) return;
      if (ev.event === 'error') throw errorOf(401, '', ev.data);
      if (ev.event === 'ready') {
        this._confirmed(undefined);
        continue;
      }
      if (ev.event !== 'push') continue;
      const n = safeJSON(ev.data);
      if (!n || typeof n.id !== 'string') continue;
      if (this._options.receipts !== false) {
        this._client.push.receipt(n, 'delivered').catch(() => {});
      }
      try {
        await this._callback(n);
      } catch (e) {
        // The callback's error is its own: reported, the stream goes on.
        queueMicrotask(() => {
          throw e;
        });
      }
    }
  }
}

/** @param {string} b64 base64url @returns {Uint8Array} */
function fromBase64Url(b64) {
  const s = b64.replace(/-/g, '+').replace(/_/g, '/') + '='.repeat((4 - (b64.length % 4)) % 4);
  const bin = atob(s);
  return Uint8Array.from(bin, (c) => c.charCodeAt(0));
}

/**
 * The namespace's push notifications (`/push/v1/…`): browsers subscribe for their signed-in
 * user; the namespace's team sends to a user, a topic or everyone; users online hear them
 * at once with `listen`.
 */
export class Push {
  /** @param {Micro} client */
  constructor(client) {
    /** @private */
    this._client = client;
    /** @private @type {string | undefined} */
    this._key = undefined;
  }

  /**
   * The namespace's VAPID public key (base64url): `applicationServerKey` for
   * `pushManager.subscribe` (for the namespace's signed-in accounts).
   * @param {{ signal?: AbortSignal }} [options]
   * @returns {Promise<string>}
   */
  async publicKey(options = {}) {
    if (!this._key) {
      const reply = await this._client.send('/push/v1/key', { signal: options.signal });
      this._key = reply.public_key;
    }
    return /** @type {string} */ (this._key);
  }

  /**
   * Subscribes this browser for the signed-in user: with a service worker's registration,
   * asks the browser for a push subscription (the user is asked for permission) and hands
   * it to the server; a `PushSubscription` (or its JSON) is handed over as it is.
   * @param {ServiceWorkerRegistration | PushSubscription | { endpoint: string, keys: { p256dh: string, auth: string } }} target
   * @param {{ topics?: string[], signal?: AbortSignal }} [options]
   * @returns {Promise<any>} The subscription as the server keeps it (its `id`, `topics`).
   */
  async subscribe(target, options = {}) {
    /** @type {any} */
    let sub = target;
    if (target && typeof target === 'object' && 'pushManager' in target) {
      const key = await this.publicKey(options);
      sub = await target.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: fromBase64Url(key) });
    }
    const json = typeof sub?.toJSON === 'function' ? sub.toJSON() : sub;
    if (!json || typeof json.endpoint !== 'string') {
      throw new TypeError('push.subscribe: a ServiceWorkerRegistration, a PushSubscription or its JSON');
    }
    return this._client.send('/push/v1/subscriptions', {
      method: 'POST',
      body: { endpoint: json.endpoint, keys: json.keys, topics: options.topics ?? [] },
      signal: options.signal,
    });
  }

  /**
   * The signed-in user's subscriptions (the team: everyone's, or `user`'s).
   * @param {{ user?: string, signal?: AbortSignal }} [options]
   * @returns {Promise<any[]>}
   */
  async subscriptions(options = {}) {
    const reply = await this._client.send('/push/v1/subscriptions', { query: { user: options.user }, signal: options.signal });
    return reply?.subscriptions ?? [];
  }

  /**
   * Ends a subscription (by its id, or as `subscribe` or `subscriptions` gave it).
   * @param {string | { id: string }} sub
   * @param {{ signal?: AbortSignal }} [options]
   */
  async unsubscribe(sub, options = {}) {
    const id = typeof sub === 'string' ? sub : sub?.id;
    if (!id) throw new TypeError('push.unsubscribe: a subscription or its id');
    await this._client.send(`/push/v1/subscriptions/${encodeURIComponent(id)}`, { method: 'DELETE', signal: options.signal });
  }

  /**
   * Sends a notification (the namespace's team): to `user`, `topic`, or `all: true`.
   * @param {{ user?: string, topic?: string, all?: boolean, title: string, body?: string, url?: string,
   *   data?: any, ttl?: number, urgency?: 'very-low' | 'low' | 'normal' | 'high', replace?: string }} message
   * @param {{ signal?: AbortSignal }} [options]
   * @returns {Promise<any>} Its report: `id`, `subscriptions`, `accepted`, `expired`, `failed`, `errors`.
   */
  send(message, options = {}) {
    return this._client.send('/push/v1/messages', { method: 'POST', body: message, signal: options.signal });
  }

  /**
   * The latest messages with their reports and receipts, newest first (the team).
   * @param {{ limit?: number, signal?: AbortSignal }} [options]
   * @returns {Promise<any[]>}
   */
  async messages(options = {}) {
    const reply = await this._client.send('/push/v1/messages', { query: { limit: options.limit }, signal: options.signal });
    return reply?.messages ?? [];
  }

  /**
   * One message's report and receipts (the team).
   * @param {string} id
   * @param {{ signal?: AbortSignal }} [options]
   */
  message(id, options = {}) {
    return this._client.send(`/push/v1/messages/${encodeURIComponent(id)}`, { signal: options.signal });
  }

  /**
   * Reports what became of a notification for the signed-in user (counted once per user):
   * the notification as it came (to `listen`, or to a service worker), whose `receipt`
   * token proves it came to them.
   * @param {{ id: string, receipt: string }} notification
   * @param {'delivered' | 'clicked'} event
   * @param {{ signal?: AbortSignal }} [options]
   */
  async receipt(notification, event, options = {}) {
    if (!notification || typeof notification.id !== 'string' || typeof notification.receipt !== 'string') {
      throw new TypeError('push.receipt: the notification as it came (its id and receipt)');
    }
    await this._client.send(`/push/v1/messages/${encodeURIComponent(notification.id)}/receipts`, {
      method: 'POST',
      body: { event, receipt: notification.receipt },
      signal: options.signal,
    });
  }


  /**
   * The signed-in user's notifications as they are sent, while online (reconnecting).
   * Each is reported `delivered` unless `receipts: false`.
   * @param {(n: Notification) => void | Promise<void>} callback
   * @param {ListenOptions} [options]
   * @returns {PushListener}
   */
  listen(callback, options = {}) {
    return new PushListener(this._client, callback, options);
  }
}

/**
 * A client of a Micro server's API gateway, acting in one namespace (a tenant app).
 *
 * @example
 * const micro = new Micro({ url: 'http://127.0.0.1:8080', namespace: 'shop' });
 * await micro.auth.login('alice', 'secret');           // a platform account, or
 * await micro.users.login('ann@example.com', 'her pw');  // an app user of the namespace
 * const todos = micro.collection('todos');
 * await todos.create({ title: 'milk', done: false, owner: micro.auth.account.id });
 */
export class Micro {
  /**
   * @param {{ url: string, namespace?: string, token?: string, refreshToken?: string,
   *   fetch?: typeof fetch, refreshMargin?: number }} options
   */
  constructor(options) {
    if (!options || typeof options.url !== 'string' || !options.url) {
      throw new TypeError('Micro: options.url (the API gateway, like http://127.0.0.1:8080) is required');
    }
    /** The API gateway's URL, without a trailing slash. */
    this.url = options.url.replace(/\/+$/, '');
    /** The namespace acted in (the `Micro-Namespace` header), "" for the server's default. */
    this.namespace = options.namespace ?? '';
    /** Seconds before its expiry that the access token is refreshed. */
    this.refreshMargin = options.refreshMargin ?? 60;
    const f = options.fetch ?? globalThis.fetch;
    if (typeof f !== 'function') throw new TypeError('Micro: no fetch: pass options.fetch');
    /** @private */
    this._fetch = options.fetch ? f : (/** @type {Parameters<typeof fetch>} */ ...a) => globalThis.fetch(...a);
    /** The signed-in account and its tokens. */
    this.auth = new Auth(this, { token: options.token, refreshToken: options.refreshToken });
    /** The namespace's collections. */
    this.collections = new CollectionService(this);
    /** The namespace's app users: sign-up, sign-in, profiles and sessions (and their managers' calls). */
    this.users = new Users(this);
    /** The namespace's files: uploads (whole or resumable), downloads, signed URLs, thumbnails. */
    this.files = new Files(this);
    /** The namespace's push notifications: browser subscriptions, sending, realtime listening. */
    this.push = new Push(this);
    /** The namespace's mailing lists: a visitor's subscription (double opt-in). */
    this.lists = new Lists(this);
    /** @private @type {Map<string, RecordService<any>>} */
    this._records = new Map();
  }

  /**
   * The records of collection `name`.
   * @param {string} name
   */
  collection(name) {
    let s = this._records.get(name);
    if (!s) {
      s = new RecordService(this, name);
      this._records.set(name, s);
    }
    return s;
  }

  /**
   * A filter from a template and values (see the exported `filter`).
   * @param {string} template
   * @param {Record<string, unknown>} [params]
   */
  filter(template, params) {
    return filter(template, params);
  }

  /**
   * A request to the gateway with the client's namespace and token (refreshed first when
   * about to expire, and once more on a 401): the response when it is a success, else a
   * MicroError. An abort rejects with the signal's AbortError.
   * @param {string} path
   * @param {{ method?: string, query?: Record<string, unknown>, body?: unknown, raw?: BodyInit,
   *   signal?: AbortSignal, auth?: boolean, accept?: string, headers?: Record<string, string>,
   *   refreshOn401?: (error: MicroError) => boolean }} [options] `body` is sent as JSON;
   *   `raw` (without `body`) as it is: a FormData, Blob or bytes, of the `Content-Type` of
   *   `headers` or the one fetch gives it (a form's, with its boundary). `refreshOn401`
   *   tells which 401s a refreshed token may cure (default: every one; not a wrong password)
   * @returns {Promise<Response>}
   */
  async request(path, options = {}) {
    const { method = 'GET', query, body, raw, signal, auth = true, accept = 'application/json' } = options;
    let url = this.url + (path.startsWith('/') ? path : '/' + path);
    if (query) {
      const q = new URLSearchParams();
      for (const [k, v] of Object.entries(query)) {
        if (v !== undefined && v !== null) q.set(k, String(v));
      }
      const s = q.toString();
      if (s) url += (url.includes('?') ? '&' : '?') + s;
    }
    const json = body === undefined ? undefined : toJSON(body);
    // (A raw body is a FormData, Blob or bytes: sent again as it is after a refresh.)
    const payload = json ?? raw;
    let retried = false;
    for (;;) {
      const token = auth ? await this.auth._fresh(signal) : '';
      /** @type {Record<string, string>} */
      const headers = { Accept: accept, ...options.headers };
      if (json !== undefined) headers['Content-Type'] = 'application/json';
      if (this.namespace) headers['Micro-Namespace'] = this.namespace;
      if (token) headers.Authorization = `Bearer ${token}`;
      /** @type {Response} */
      let res;
      try {
        res = await this._fetch(url, { method, headers, body: payload, signal });
      } catch (e) {
        if (isAbort(e) || signal?.aborted) throw e;
        throw new MicroError({
          status: 0,
          detail: `cannot reach ${this.url}: ${/** @type {any} */ (e)?.cause?.message ?? /** @type {any} */ (e)?.message ?? e}`,
          id: 'client',
          cause: e,
        });
      }
      if (res.ok) return res;
      const err = errorOf(res.status, res.statusText, await res.text().catch(() => ''));
      if (res.status === 401 && token && !retried && this.auth.refreshToken && (options.refreshOn401?.(err) ?? true)) {
        retried = true;
        // Another request may have refreshed it meanwhile; else refresh now.
        if (this.auth.token === token) {
          try {
            await this.auth.refresh({ signal });
          } catch {
            throw err;
          }
        }
        continue;
      }
      throw err;
    }
  }

  /**
   * A JSON request (see `request`): the reply's JSON, or undefined for a 204.
   * @param {string} path
   * @param {{ method?: string, query?: Record<string, unknown>, body?: unknown, raw?: BodyInit,
   *   signal?: AbortSignal, auth?: boolean, headers?: Record<string, string>,
   *   refreshOn401?: (error: MicroError) => boolean }} [options]
   * @returns {Promise<any>}
   */
  async send(path, options = {}) {
    const res = await this.request(path, options);
    if (res.status === 204) return undefined;
    const text = await res.text();
    if (!text) return undefined;
    try {
      return JSON.parse(text);
    } catch (e) {
      throw new MicroError({
        status: res.status,
        detail: `the reply is not JSON: ${text.slice(0, 200)}`,
        id: 'client',
        cause: e,
      });
    }
  }
}

export default Micro;
