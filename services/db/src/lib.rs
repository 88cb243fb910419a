//! The database product (issue 19, Backend-as-a-Service I): collections of JSON records
//! per namespace, queried with PocketBase's filter language, held by per-collection rules,
//! with realtime subscriptions. Built in parts; here so far:
//!
//! - [`filter`]: the filter language, parsed with positions in its errors and limits on
//!   size, depth and terms;
//! - [`sql`]: a parsed filter as SQLite's `WHERE` clause, every value a parameter;
//! - [`records`]: records of collections in SQLite, listed by filters, sorted and paged,
//!   written alone or in atomic batches with expected versions.

pub mod filter;
pub mod records;
pub mod sql;
