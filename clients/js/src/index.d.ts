// Types of @micro/client.

/** The fields every record has, whatever its collection. */
export interface RecordMeta {
  /** Its id (new ones sort by time). */
  id: string;
  /** When it was made, like `2026-12-06 00:32:18.628Z`. */
  created: string;
  /** When it last changed. */
  updated: string;
  /** 1 when made, +1 at each write. */
  version: number;
}

/** A record of a collection whose fields are `T`. */
export type RecordModel<T extends object = Record<string, unknown>> = T & RecordMeta;

/** The fields of a create or replace. */
export type CreateData<T extends object> = T;

/** The fields of a merge update: those named change, a `null` removes one. */
export type UpdateData<T extends object> = { [K in keyof T]?: T[K] | null };

/** The names of `T`'s own fields. */
export type FieldName<T extends object> = Extract<keyof T, string>;

/** A record with only the fields `K` of its own (and its `id`, `created`, `updated`, `version`). */
export type PickRecord<T extends object, K extends FieldName<T>> = Pick<T, K> & RecordMeta;

export interface RequestOptions {
  /** Aborts the request: it rejects with the signal's AbortError. */
  signal?: AbortSignal;
}

export interface FieldsOptions<T extends object, K extends FieldName<T>> extends RequestOptions {
  /** Only these fields (`['title', 'done']` or `"title,done"`); the record's own always come. */
  fields?: readonly K[] | string;
}

export interface ExpandOptions {
  /** Relations to expand (`"author,comments.post"`), under each record's `expand`, as
   * the related collection's view rule lets the caller see them. */
  expand?: string | readonly string[];
}

export interface SearchOptions<T extends object, K extends FieldName<T>> extends FieldsOptions<T, K> {
  /** Each word may begin a longer one (`data` finds `database`). */
  prefix?: boolean;
  /** Only records that hold this filter too. */
  filter?: string;
  page?: number;
  perPage?: number;
}

export interface AggregateOptions extends RequestOptions {
  filter?: string;
  /** Fields to group by (none: one row over every record). */
  groupBy?: string | readonly string[];
  /** The figures (default: a count), each named `op` or `op_field` in the rows. */
  aggregates?: { op: 'count' | 'sum' | 'avg' | 'min' | 'max'; field?: string }[];
  /** At most this many groups, the largest first (default 100). */
  limit?: number;
}

export interface ListOptions<T extends object, K extends FieldName<T>> extends FieldsOptions<T, K>, ExpandOptions {
  /** A filter, like `done = false && owner = @request.auth.id` (build one with `filter()`). */
  filter?: string;
  /** Fields to sort by, `-` first for descending: `"-created,title"` or `['-created', 'title']`. */
  sort?: string | readonly string[];
  /** The page, from 1. */
  page?: number;
  /** Records a page (default 30, at most 500). */
  perPage?: number;
  /** Count every match too (`total`). */
  total?: boolean;
}

export interface ListResult<R> {
  items: R[];
  page: number;
  perPage: number;
  /** Every match, when `total` was asked for. */
  total?: number;
}

export interface CreateOptions extends RequestOptions {
  /** The record's id (default: a new one). */
  id?: string;
}

export interface VersionOptions extends RequestOptions {
  /** Write only if the record is still at this version, else a 409 MicroError. */
  version?: number;
}

/** One change of a subscription. */
export type ChangeEvent<T extends object = Record<string, unknown>> =
  | {
      action: 'create' | 'update' | 'delete';
      /** Where the subscription is: resume after it. */
      cursor: number;
      /** The record as it is after the change (as it was, for a delete). */
      record: RecordModel<T>;
    }
  | {
      /** The collection was deleted (perhaps with its namespace): every record the
       * subscriber holds is gone, and the subscription has ended. */
      action: 'reset';
      cursor: number;
      record?: undefined;
    };

export interface SubscribeErrorInfo {
  /** Whether the subscription goes on (reconnecting after `delay`) or has ended. */
  retrying: boolean;
  /** Reconnections tried since the last confirmed one. */
  attempt: number;
  /** Milliseconds until the next try. */
  delay: number;
}

export interface SubscribeOptions {
  /** Only this record's changes. */
  id?: string;
  /** Only changes of records that hold this filter. */
  filter?: string;
  /** Resume after this cursor (an event's `cursor`, or `subscription.cursor`). */
  cursor?: number;
  /** Each error; a transient one (network, 5xx, 408, 429) is retried with backoff. */
  onError?: (error: MicroError, info: SubscribeErrorInfo) => void;
  /** Each time the server confirms the subscription (first and after each reconnection). */
  onSubscribed?: (cursor: number) => void;
  /** Reconnection delays in ms: `initial` (250) doubling up to `max` (10000), with jitter. */
  backoff?: { initial?: number; max?: number };
}

/** A live subscription. */
export declare class Subscription {
  private constructor();
  /** The cursor of the last event delivered (or where the subscription started). */
  readonly cursor: number | undefined;
  /** Whether it has ended (unsubscribed, or a fatal error). */
  readonly closed: boolean;
  /** Resolves with the cursor when the server first confirms it; rejects if it ends before. */
  readonly ready: Promise<number>;
  /** Ends it: the connection closes, no more callbacks. */
  unsubscribe(): void;
}

export type WriteAction = 'create' | 'update' | 'replace' | 'delete';

export interface BatchWrite {
  action: WriteAction;
  id?: string;
  data?: object;
  version?: number;
}

/** Writes to one collection, sent together and applied all or none. */
export declare class Batch<T extends object = Record<string, unknown>> {
  private constructor();
  /** The writes so far, in order. */
  readonly writes: BatchWrite[];
  create(data: CreateData<T>, options?: { id?: string }): this;
  update(id: string, data: UpdateData<T>, options?: { version?: number }): this;
  replace(id: string, data: CreateData<T>, options?: { version?: number }): this;
  delete(id: string, options?: { version?: number }): this;
  /** Every record written, in order (a deleted one as it was); or a MicroError and nothing written. */
  send(options?: RequestOptions): Promise<RecordModel<T>[]>;
}

/** The records of one collection. */
export declare class RecordService<T extends object = Record<string, unknown>> {
  private constructor();
  /** The collection's name. */
  readonly name: string;
  /** A page of the records the caller may list. */
  list<K extends FieldName<T> = FieldName<T>>(options?: ListOptions<T, K>): Promise<ListResult<PickRecord<T, K>>>;
  /** One record (404 MicroError when it does not exist or the caller may not see it). */
  getOne<K extends FieldName<T> = FieldName<T>>(id: string, options?: FieldsOptions<T, K> & ExpandOptions): Promise<PickRecord<T, K>>;
  /** Full-text search: records holding every word, best first (400 when the collection has no `search` fields). */
  search<K extends FieldName<T> = FieldName<T>>(text: string, options?: SearchOptions<T, K>): Promise<Omit<ListResult<PickRecord<T, K>>, 'total'>>;
  /** Figures over what the caller may list, in groups. */
  aggregate(options?: AggregateOptions): Promise<Record<string, unknown>[]>;
  /** Makes a record. */
  create(data: CreateData<T>, options?: CreateOptions): Promise<RecordModel<T>>;
  /** Changes some fields (merge; a `null` removes one). */
  update(id: string, data: UpdateData<T>, options?: VersionOptions): Promise<RecordModel<T>>;
  /** Replaces every field. */
  replace(id: string, data: CreateData<T>, options?: VersionOptions): Promise<RecordModel<T>>;
  /** Deletes a record. */
  delete(id: string, options?: VersionOptions): Promise<void>;
  /** A batch of writes, all or none. */
  batch(): Batch<T>;
  /**
   * The collection's changes as they commit, in order and each once, reconnecting with
   * backoff and resuming after the last cursor. If the callback returns a promise, the
   * next event waits for it.
   */
  subscribe(callback: (event: ChangeEvent<T>) => void | Promise<void>, options?: SubscribeOptions): Subscription;
}

export type FieldType = 'text' | 'number' | 'bool' | 'date' | 'array' | 'object' | 'json' | 'relation';

export interface FieldSpec {
  /** Letters, digits and `_`, not one of `id`, `created`, `updated`, `version`. */
  name: string;
  /** Default `json` (anything). */
  type?: FieldType;
  required?: boolean;
  unique?: boolean;
  /** The least number, or the shortest text or list. */
  min?: number;
  /** The greatest number, or the longest text or list. */
  max?: number;
  /** The only values it may take. */
  enum?: unknown[];
  /** For a relation: the collection its ids are of. */
  collection?: string;
}

/** A rule: `null` (locked: the namespace's admins and developers only), `""` (anyone) or a filter. */
export type Rule = string | null;

export interface Rules {
  list?: Rule;
  view?: Rule;
  create?: Rule;
  update?: Rule;
  delete?: Rule;
}

export interface CollectionSpec {
  /** Letters, digits and `_`, not starting with a digit, at most 64. */
  name: string;
  /** The fields every record is checked against; null or absent: any JSON object. */
  schema?: FieldSpec[] | null;
  /** Who may do what; each rule locked unless given. */
  rules?: Rules;
  /** Fields to rename in every record, old name to new. */
  rename?: Record<string, string>;
  /** Fields to remove from every record. */
  drop?: string[];
}

export interface CollectionInfo {
  name: string;
  schema: FieldSpec[] | null;
  rules: { list: Rule; view: Rule; create: Rule; update: Rule; delete: Rule };
  /** Each rule in words. */
  explained: string[];
  created: string;
  updated: string;
}

/** The namespace's collections (managed by its admins and developers). */
export declare class CollectionService {
  private constructor();
  list(options?: RequestOptions): Promise<CollectionInfo[]>;
  get(name: string, options?: RequestOptions): Promise<CollectionInfo>;
  /** Makes or changes a collection. */
  save(spec: CollectionSpec, options?: RequestOptions): Promise<CollectionInfo>;
  /** Deletes a collection and its records. */
  delete(name: string, options?: RequestOptions): Promise<void>;
}

/** An account, as the auth service shows it. */
export interface Account {
  id: string;
  name: string;
  type: 'user' | 'service' | (string & {});
  namespace: string;
  scopes: string[];
  metadata: Record<string, string>;
  /** Unix seconds, as text. */
  created: string;
}

/**
 * What a session is: `account` (a platform account, `POST /auth/token`), `user` (an app
 * user of the namespace, `micro.users`), `""` when signed out.
 */
export type SessionKind = 'account' | 'user' | '';

export interface Session {
  /** The access token ("" when signed out). */
  token: string;
  /** The refresh token ("" when none); each works once. */
  refreshToken: string;
  /** When the access token expires, Unix seconds. */
  expiry: number | null;
  /** The platform account, or the app user (`kind: 'user'`). */
  account: Account | AppUser | null;
  /** Where the session refreshes: `/auth/token` (`account`) or `/users/v1/refresh` (`user`). */
  kind: SessionKind;
}

/** The session an app user's sign-in gives. */
export interface AppSession extends Session {
  account: AppUser;
  kind: 'user';
  /** The signed-in app user. */
  user: AppUser;
}

/** The signed-in account (or app user) and its tokens. */
export declare class Auth {
  private constructor();
  readonly token: string;
  readonly refreshToken: string;
  readonly expiry: number | null;
  /** The platform account, or the app user, as the last sign-in or refresh gave it. */
  readonly account: Account | AppUser | null;
  /** The signed-in app user (null when the session is not an app user's). */
  readonly user: AppUser | null;
  /** What the session is (and where it refreshes). */
  readonly kind: SessionKind;
  /** Whether there is a token that has not expired (or that can be refreshed). */
  readonly isValid: boolean;
  /** Signs in a platform account (`POST /auth/token`); the token is then sent with every request and refreshed before it expires. */
  login(id: string, password: string, options?: RequestOptions): Promise<Session>;
  /** Exchanges the refresh token for new tokens now, where the session signed in (concurrent calls share one request). */
  refresh(options?: RequestOptions): Promise<Session>;
  /**
   * Forgets the tokens; an app user's session is also ended on the server, in the
   * background (the promise never rejects; `micro.users.logout()` reports a failure).
   */
  logout(): Promise<void>;
  /** Sets the session, e.g. one kept in storage (`kind` from `onChange`; else the token tells). */
  set(session: {
    token: string;
    refreshToken?: string;
    expiry?: number | null;
    account?: Account | AppUser | null;
    kind?: SessionKind;
  }): void;
  /** Calls `listener` at each change of the session; returns a function that removes it. */
  onChange(listener: (session: Session) => void): () => void;
}

/** An end user of the namespace's apps. */
export interface AppUser {
  /** 15 letters and digits: what records name as their owner (`@request.auth.id`). */
  id: string;
  /** The email address, lowercased. */
  email: string;
  name: string;
  /** Whether the address is confirmed (`@request.auth.verified`). */
  verified: boolean;
  /** Profile fields of the app's choosing (a JSON object of at most 16 KiB). */
  data: Record<string, unknown>;
  /** Signed up, Unix seconds. */
  created: number;
  /** Last changed, Unix seconds. */
  updated: number;
}

/** A signed-in device or browser of an app user. */
export interface UserSession {
  /** 16 letters and digits (`micro.users.sessionId` is the client's own). */
  id: string;
  /** Signed in, Unix seconds. */
  created: number;
  /** Last refreshed, Unix seconds. */
  used: number;
  /** Ends unless refreshed before, Unix seconds. */
  expires: number;
  /** The client address that signed in. */
  address: string;
}

/** What a namespace asks of its app users' passwords. */
export interface PasswordPolicy {
  /** The fewest characters, 6 to 128 (default 8). */
  min_length?: number;
  /** How many kinds of character (lowercase, uppercase, digits, others) a password mixes, 1 to 4 (default 1). */
  classes?: number;
  /** Whether the most common passwords (and the user's own address) are refused (default true). */
  forbid_common?: boolean;
}

/** A namespace's settings for its app users (each left out takes its default). */
export interface UsersSettings {
  /** Whether anyone may sign up (default true). */
  signups?: boolean;
  /** The app's name, in the mails' sender and subjects (default: the namespace). */
  app_name?: string;
  /** The app's page a mailed code links to (`https://…`; the link adds `purpose`, `email` and `code`). */
  link_url?: string;
  /** Whether a user must confirm the address before signing in with a password. */
  verify_before_login?: boolean;
  /** Signups per client address per hour (default 20). */
  signups_per_hour?: number;
  /** Logins, codes and resets per client address per minute (default 60). */
  attempts_per_minute?: number;
  password?: PasswordPolicy;
}

/** The answer to a request whose outcome is mailed (the same whoever asks). */
export interface Accepted {
  message: string;
}

/**
 * The namespace's app users (`/users/v1/…`). The sign-ins put the app user's session in
 * `micro.auth` (`kind: 'user'`), refreshed through `/users/v1/refresh`.
 */
export declare class Users {
  private constructor();
  /** The signed-in session's id, as `sessions()` lists it ("" when no app user is signed in). */
  readonly sessionId: string;
  /** Signs up (does not sign in): a code to confirm the address is mailed. */
  signup(user: { email: string; password: string; name?: string; data?: Record<string, unknown> }, options?: RequestOptions): Promise<Accepted>;
  /** Signs in with the address and password. */
  login(email: string, password: string, options?: RequestOptions): Promise<AppSession>;
  /** Confirms the address with the mailed code: verified and signed in. */
  verify(email: string, code: string, options?: RequestOptions & { password?: string }): Promise<AppSession>;
  /** Mails a new code to confirm the address. */
  requestVerification(email: string, options?: RequestOptions): Promise<Accepted>;
  /** Mails a code to reset the password. */
  requestReset(email: string, options?: RequestOptions): Promise<Accepted>;
  /** Sets a new password with the mailed code: the other sessions end; signed in. */
  reset(email: string, code: string, password: string, options?: RequestOptions): Promise<AppSession>;
  /** Mails a one-time sign-in code (a magic link when the settings give `link_url`). */
  requestCode(email: string, options?: RequestOptions): Promise<Accepted>;
  /** Signs in with a mailed code. */
  loginWithCode(email: string, code: string, options?: RequestOptions): Promise<AppSession>;
  oauthStart(provider: string, redirectUrl: string, options?: RequestOptions): Promise<{ url: string; state: string }>;
  oauthFinish(from: string | { state: string; code: string }, options?: RequestOptions): Promise<AppSession>;
  /** The signed-in user. */
  me(options?: RequestOptions): Promise<AppUser>;
  /** Changes the name and profile fields (`data` replaced whole). */
  update(changes: { name?: string; data?: Record<string, unknown> }, options?: RequestOptions): Promise<AppUser>;
  /** Changes the password: every session ends and a new one is signed in. */
  changePassword(password: string, newPassword: string, options?: RequestOptions): Promise<AppSession>;
  /** The user's sessions, newest first. */
  sessions(options?: RequestOptions): Promise<UserSession[]>;
  /** Ends a session (and voids the user's access tokens: the other sessions refresh); this one's signs out. */
  endSession(id: string, options?: RequestOptions): Promise<void>;
  /** Everything kept about the user. */
  export(options?: RequestOptions): Promise<{ user: AppUser; sessions: UserSession[] }>;
  /** Deletes the user (the password proves it is them) and signs out. */
  deleteMe(password: string, options?: RequestOptions): Promise<void>;
  /** Ends the session on the server and forgets the tokens (forgotten even when this rejects). */
  logout(options?: RequestOptions): Promise<void>;
  /** Managers: a page of the namespace's app users, by id. */
  list(options?: RequestOptions & { page?: number; perPage?: number }): Promise<{ items: AppUser[]; page: number; perPage: number }>;
  /** Managers: one app user. */
  get(id: string, options?: RequestOptions): Promise<AppUser>;
  /** Managers: deletes an app user; their tokens stop. */
  delete(id: string, options?: RequestOptions): Promise<void>;
  /** Managers: the namespace's settings (the defaults while app users are off). */
  settings(options?: RequestOptions): Promise<Required<UsersSettings>>;
  /** Managers: saves the settings, whole (turning app users on); the settings as saved. */
  saveSettings(settings: UsersSettings, options?: RequestOptions): Promise<Required<UsersSettings>>;
}

/** A file, as the files product keeps it. */
export interface FileInfo {
  /** 20 lowercase letters and digits. */
  id: string;
  /** Its name (no path). */
  name: string;
  /** Its size in bytes. */
  size: number;
  /** Its content type, as its content tells (`image/png`, `text/plain; charset=utf-8`). */
  type: string;
  /** Whether anybody may read it. */
  public: boolean;
  /** Who uploaded it: an app user's id, or an account's. */
  owner: string;
  /** Whether the owner is an app user or an account of the team. */
  owner_kind: 'user' | 'account';
  /** The SHA-256 of its content, hex. */
  sha256: string;
  /** Uploaded, Unix seconds. */
  created: number;
  /** The database record it is attached to (`collection/id`). */
  record?: string;
  /** Where its content is, relative to the API (`/files/v1/content/{ns}/{id}/{name}`): `micro.files.url(file)` makes it absolute. */
  url: string;
}

/** A namespace's files settings. */
export interface FilesSettings {
  /** Whether its app users may upload (their own files). */
  app_uploads: boolean;
  /** The largest file, in bytes (default 10 MiB, at most 1 GiB). */
  max_file_size: number;
  /** The most bytes its files may hold together (default 1 GiB). */
  max_total: number;
  /** The content types allowed (`image/png`, or `image/` for every image); empty: any. */
  types: string[];
  /** The thumbnail sizes `?thumb=` may ask for (`WxH`; default 100x100, 200x200, 400x400). */
  thumbs: string[];
}

/** How far an upload is. */
export interface UploadProgress {
  /** Bytes the server has. */
  loaded: number;
  /** The file's size. */
  total: number;
}

export interface UploadOptions extends RequestOptions {
  /** The file's name (default: the File's, else `file`); no paths. */
  name?: string;
  /** The content type to declare (default: the Blob's); trusted only for text, and an image must be one. */
  type?: string;
  /** Whether anybody may read it (default false). */
  public?: boolean;
  /** The database record (`collection/id`, one the caller may change) it is attached to: seen by whoever may see it, deleted with it. */
  record?: string;
  /** The bytes sent so far (a file of up to 8 MiB: only at its start and end; a larger one: at each chunk). */
  onProgress?: (progress: UploadProgress) => void;
}

export interface FileUrlOptions {
  /** A thumbnail of an image: `'200x150'` (a box it fits in, its aspect kept), or `200` for a square. */
  thumb?: string | number;
}

export interface FetchFileOptions extends RequestOptions, FileUrlOptions {
  /** A part: `[first, last]` (inclusive), `[first]` (to the end), `[-n]` (the last n bytes), or `'bytes=0-99'`. */
  range?: string | readonly [number, number?];
}

/**
 * The namespace's files (`/files/v1/…`): uploaded by its team, and by its app users when
 * the settings let them; private ones are read by their owner, the team, whoever may see
 * their record, or with a signed URL.
 */
export declare class Files {
  private constructor();
  /**
   * Uploads a Blob, File or bytes: up to 8 MiB as a multipart form, a larger one in
   * resumable 4 MiB chunks (tried again from the server's offset after a 409 or a
   * network or server failure); the file as stored.
   */
  upload(file: Blob | ArrayBuffer | ArrayBufferView, options?: UploadOptions): Promise<FileInfo>;
  /** The caller's files (an app user's own; the team every one), newest first; or a record's. */
  list(options?: RequestOptions & { record?: string; owner?: string }): Promise<FileInfo[]>;
  /** One file (404 when none, or the caller may not see it). */
  get(id: string, options?: RequestOptions): Promise<FileInfo>;
  /** Deletes a file, its thumbnails and its signed URLs (its owner or the team). */
  remove(id: string, options?: RequestOptions): Promise<void>;
  /** An absolute URL anybody may read the file at until it expires (`expiresIn` seconds, default 3600, at most 7 days). */
  signedUrl(id: string, expiresIn?: number, options?: RequestOptions): Promise<string>;
  /** The absolute URL of a file's content (or thumbnail): anybody's for a public file. */
  url(file: FileInfo | string, options?: FileUrlOptions): string;
  /** Downloads the content with the client's token: the response (200, or 206 for a range); else a MicroError. */
  fetch(file: FileInfo | string, options?: FetchFileOptions): Promise<Response>;
  /** The namespace's files settings (its team). */
  settings(options?: RequestOptions): Promise<FilesSettings>;
  /** Saves the settings, whole: what is left out takes its default (its admins). */
  saveSettings(settings: Partial<FilesSettings>, options?: RequestOptions): Promise<FilesSettings>;
}

/** A notification as the server sends it (to a service worker, and to `push.listen`). */
export interface PushNotification {
  /** The message's id (for `push.receipt`). */
  id: string;
  title: string;
  body: string;
  /** Where a click leads. */
  url?: string;
  /** Anything else the sender gave. */
  data?: unknown;
  /** The user's token for `push.receipt`. */
  receipt: string;
}

/** A browser's subscription as the server keeps it (its push service's origin, no keys). */
export interface PushSubscriptionInfo {
  id: string;
  user: string;
  app_user: boolean;
  endpoint: string;
  topics: string[];
  created: number;
  last_ok?: number | null;
  failures: number;
}

export interface PushMessage {
  /** An app user's id; or `topic`; or `all: true`. */
  user?: string;
  topic?: string;
  all?: boolean;
  /** One line, 1–200 bytes. */
  title: string;
  body?: string;
  /** An http(s) URL or a path of the app (`/…`). */
  url?: string;
  data?: unknown;
  /** Seconds a push service keeps it for an offline browser (default 86400, at most 28 days). */
  ttl?: number;
  urgency?: 'very-low' | 'low' | 'normal' | 'high';
  /** A newer message under this name replaces an undelivered older one. */
  replace?: string;
}

/** What became of a message sent. */
export interface PushReport {
  id: string;
  created: number;
  by: string;
  /** `user:<id>`, `topic:<name>` or `all`. */
  target: string;
  title: string;
  subscriptions: number;
  accepted: number;
  expired: number;
  failed: number;
  errors: string[];
  /** Users who reported `delivered` and `clicked` (once each). */
  receipts: { delivered?: number; clicked?: number };
}

export interface ListenOptions {
  /** Topics to hear besides those the user's subscriptions follow. */
  topics?: string[];
  /** Report `delivered` for each notification (default true). */
  receipts?: boolean;
  onError?: (error: MicroError, info: SubscribeErrorInfo) => void;
  /** Reconnection delays in ms: `initial` (250) doubling up to `max` (10000), with jitter. */
  backoff?: { initial?: number; max?: number };
}

/** The signed-in user's realtime notifications. */
export declare class PushListener {
  private constructor();
  /** Whether it has ended (closed, or refused for good: the user signed out or was deleted). */
  readonly closed: boolean;
  /** Resolves when the server first confirms it; rejects if it ends before. */
  readonly ready: Promise<void>;
  /** Ends it: the connection closes, no more callbacks. */
  close(): void;
}

/** The namespace's mailing lists, as a visitor meets them. */
export declare class Lists {
  private constructor();
  /** Subscribes an address (a mail asks it to confirm, unless the list has no double opt-in); what to tell the visitor. */
  subscribe(list: string, who: { email: string; name?: string; signal?: AbortSignal }): Promise<string>;
}

/** The namespace's push notifications (`/push/v1/…`). */
export declare class Push {
  private constructor();
  /** The namespace's VAPID public key (base64url): `applicationServerKey` (signed-in accounts of the namespace). */
  publicKey(options?: RequestOptions): Promise<string>;
  /** Subscribes this browser (a service worker's registration asks the browser) for the signed-in user. */
  subscribe(
    target: ServiceWorkerRegistration | PushSubscription | { endpoint: string; keys: { p256dh: string; auth: string } },
    options?: RequestOptions & { topics?: string[] },
  ): Promise<PushSubscriptionInfo>;
  /** The signed-in user's subscriptions (the team: everyone's, or `user`'s). */
  subscriptions(options?: RequestOptions & { user?: string }): Promise<PushSubscriptionInfo[]>;
  /** Ends a subscription. */
  unsubscribe(sub: string | { id: string }, options?: RequestOptions): Promise<void>;
  /** Sends a notification (the namespace's team). */
  send(message: PushMessage, options?: RequestOptions): Promise<PushReport>;
  /** The latest messages, newest first (the team). */
  messages(options?: RequestOptions & { limit?: number }): Promise<PushReport[]>;
  /** One message's report (the team). */
  message(id: string, options?: RequestOptions): Promise<PushReport>;
  /** Reports what became of a notification for the signed-in user: the notification as it came. */
  receipt(notification: { id: string; receipt: string }, event: 'delivered' | 'clicked', options?: RequestOptions): Promise<void>;
  /** The signed-in user's notifications as they are sent, while online. */
  listen(callback: (n: PushNotification) => void | Promise<void>, options?: ListenOptions): PushListener;
}

export interface MicroOptions {
  /** The API gateway, like `http://127.0.0.1:8080`. */
  url: string;
  /** The namespace (tenant app) to act in, sent as `Micro-Namespace`. */
  namespace?: string;
  /** An access token to start with. */
  token?: string;
  /** A refresh token to start with. */
  refreshToken?: string;
  /** The fetch to use (default: the global one). */
  fetch?: typeof fetch;
  /** Seconds before its expiry that the access token is refreshed (default 60). */
  refreshMargin?: number;
}

export interface RawRequestOptions extends RequestOptions {
  method?: string;
  query?: Record<string, string | number | boolean | null | undefined>;
  /** Sent as JSON. */
  body?: unknown;
  /** Sent as it is, without `body` (a FormData, Blob or bytes), of the `Content-Type` of `headers` or fetch's. */
  raw?: BodyInit;
  /** Send the token (default true). */
  auth?: boolean;
  accept?: string;
  headers?: Record<string, string>;
}

export declare class Micro {
  constructor(options: MicroOptions);
  /** The API gateway's URL, without a trailing slash. */
  readonly url: string;
  /** The namespace acted in ("" for the server's default). */
  namespace: string;
  /** Seconds before its expiry that the access token is refreshed. */
  refreshMargin: number;
  readonly auth: Auth;
  readonly collections: CollectionService;
  /** The namespace's app users: sign-up, sign-in, profiles, sessions (and their managers' calls). */
  readonly users: Users;
  /** The namespace's files: uploads (whole or resumable), downloads, signed URLs, thumbnails. */
  readonly files: Files;
  /** The namespace's push notifications: browser subscriptions, sending, realtime listening. */
  readonly push: Push;
  /** The namespace's mailing lists: a visitor's subscription (double opt-in). */
  readonly lists: Lists;
  /** The records of collection `name`, typed by `T` (its fields, without the record's own). */
  collection<T extends object = Record<string, unknown>>(name: string): RecordService<T>;
  /** A filter from a template and values, safely quoted (see `filter`). */
  filter(template: string, params?: FilterParams): string;
  /** A request to the gateway: the response when it succeeds, else a MicroError. */
  request(path: string, options?: RawRequestOptions): Promise<Response>;
  /** A JSON request: the reply's JSON (undefined for a 204), else a MicroError. */
  send<R = any>(path: string, options?: RawRequestOptions): Promise<R>;
}

export default Micro;

/** An error of the API, or of reaching it. */
export declare class MicroError extends Error {
  constructor(init: {
    status: number;
    code?: number;
    detail: string;
    id?: string;
    statusText?: string;
    data?: unknown;
    cause?: unknown;
  });
  name: 'MicroError';
  /** The HTTP status; 0 when the server could not be reached or the stream broke. */
  readonly status: number;
  /** The code of the error body. */
  readonly code: number;
  /** What went wrong, in words. */
  readonly detail: string;
  /** The service that answered with the error (`db`, `auth`); `client` for this client's own; "" when unknown. */
  readonly id: string;
  /** The status in words (`Bad Request`). */
  readonly statusText: string;
  /** The error body as it came. */
  readonly data: unknown;
  /** Where a filter or rule went wrong, in characters from 0, when it did. */
  readonly position: number | undefined;
  /** Whether trying again later may succeed (network failures, 408, 429, 5xx). */
  readonly transient: boolean;
}

/** A value `filter` can put in a filter. */
export type FilterValue = string | number | bigint | boolean | null | Date | object;

export type FilterParams = Record<string, FilterValue>;

/**
 * A filter from a template and values: each `{:name}` replaced by its value as a safe
 * literal (strings quoted and escaped, numbers, booleans, null, Dates as
 * `'YYYY-MM-DD HH:MM:SS.mmmZ'`, anything else as quoted JSON).
 */
export declare function filter(template: string, params?: FilterParams): string;

/** A date as the server writes times: `YYYY-MM-DD HH:MM:SS.mmmZ` (UTC). */
export declare function formatDate(date: Date): string;

/** The fields every record has. */
export declare const RECORD_FIELDS: readonly ['id', 'created', 'updated', 'version'];

/** One server-sent event. */
export interface ServerSentEvent {
  event: string;
  data: string;
  id: string;
  retry?: number;
}

/** The events of a `text/event-stream` body, in order, as they arrive. */
export declare function readEventStream(body: ReadableStream<Uint8Array>): AsyncGenerator<ServerSentEvent, void, undefined>;
