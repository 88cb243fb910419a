//! The database product (Backend-as-a-Service): collections of JSON records per
//! namespace, queried with PocketBase's filter language, held by per-collection rules,
//! with realtime subscriptions. Like every product it is a service built with the
//! framework ([`service_with`]), hosted in-process by `micro server` and runnable on its
//! own (`micro-db`).
//!
//! - [`filter`]: the filter language, parsed with positions in its errors and limits on
//!   size, depth and terms;
//! - [`sql`]: a parsed filter as SQLite's `WHERE` clause, every value a parameter;
//! - [`records`]: records of collections in SQLite, listed by filters, sorted and paged,
//!   written alone or in atomic batches with expected versions, each write in a change
//!   log that realtime subscribers read from;
//! - [`pgsql`] and [`pg`]: the same in PostgreSQL, for nodes sharing a database;
//! - [`store`]: whichever of the two holds the records;
//! - [`tail`]: the recent changes of a collection, read once for all its subscribers;
//! - [`collections`]: a collection's schema and rules;
//! - [`service`]: the `db` service's endpoints.
//!
//! On the gateway (`micro db …` on the CLI, `db.Db` over gRPC):
//!
//! | Route | Endpoint |
//! |---|---|
//! | `GET /db/v1/collections` | `Db.Collections` |
//! | `POST /db/v1/collections` | `Db.SaveCollection` |
//! | `GET`, `DELETE /db/v1/collections/{name}` | `Db.Collection`, `Db.DeleteCollection` |
//! | `GET /db/v1/{collection}/records` | `Db.List` (`filter`, `sort`, `page`, `per_page`, `total`, `fields`) |
//! | `POST /db/v1/{collection}/records` | `Db.Create` (`{"data": {…}}`) |
//! | `GET /db/v1/{collection}/records/{id}` | `Db.Get` |
//! | `PATCH`, `PUT /db/v1/{collection}/records/{id}` | `Db.Update` (merge), `Db.Replace` |
//! | `DELETE /db/v1/{collection}/records/{id}` | `Db.Delete` |
//! | `POST /db/v1/{collection}/batch` | `Db.Batch` (all or none) |
//! | `GET /db/v1/{collection}/subscribe` | `Db.Subscribe` (server-sent events, or a WebSocket) |

pub mod collections;
pub mod filter;
pub mod pg;
pub mod pgsql;
pub mod records;
pub mod service;
pub mod sql;
pub mod store;
pub mod tail;

pub use service::{Access, Db, DeleteHook, NAME, Settings, service_with};
