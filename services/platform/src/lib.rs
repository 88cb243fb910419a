//! The platform (M3O), a product: how strangers become tenants. It starts with an
//! invite-only **signup**:
//!
//! 1. Anyone joins the **waitlist** with an email (`Signup.Join`); a one-time code is
//!    mailed through the email product and proves the address (`Signup.Verify`).
//! 2. The platform's operators see the waitlist (`Platform.Waitlist`) and **invite in
//!    batches** ("the next 10", or chosen entries: `Platform.Invite`); each invitee gets a
//!    single-use code by mail. Users hold a few invites of their own to give out
//!    (`Platform.InviteFriend`).
//! 3. An invitee sets a password (`Signup.Accept`) and gets an account (`admin` of it) in
//!    **a namespace of their own**, named after them and never anyone else's.
//!
//! With invite-only off (`Platform.Settings`), a verified address is invited at once.
//!
//! Then **teams** ([`team`]): a person creates team namespaces, invites members with a
//! role (owner, admin, developer, viewer) and switches into them; and **plans**
//! ([`plans`]): Community, Personal and Team, whose quotas the core enforces.
//!
//! Codes are random (6 digits for verification, 122 bits for invites), kept only as
//! hashes, compared in constant time, expire, and allow 5 wrong tries. Joining is limited
//! per client address, per email domain and per address. The product's account holds
//! the `admin` scope of `micro`: it creates namespaces and accounts.

pub mod plans;
pub mod signup;
pub mod team;

pub use signup::{Entry, EntryState, Settings};
pub use team::Role;

use micro::{Code, Context, Service, Status};
use micro_core::licence::Gate;
use std::sync::Arc;

/// The service's name.
pub const NAME: &str = "platform";

/// Where everything of namespace `ns` is kept in the service's table (its members and
/// team invites): the server deletes it with the namespace. The waitlist and what is a
/// person's live under `_`, which no namespace name starts with.
pub fn tenant_prefix(ns: &str) -> String {
    format!("{ns}/")
}

pub(crate) fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

pub(crate) fn bad(msg: impl Into<String>) -> Status {
    Status::bad_request(NAME, msg)
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(value: &[u8]) -> Result<T, Status> {
    serde_json::from_slice(value).map_err(|e| Status::internal(NAME, format!("a stored record is unreadable: {e}")))
}

pub(crate) fn encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, Status> {
    serde_json::to_vec(v).map_err(|e| Status::internal(NAME, e.to_string()))
}

/// The caller, who must administer the whole platform.
pub(crate) fn operator(ctx: &Context) -> Result<(), Status> {
    match ctx.caller() {
        Some(c) if c.is_operator() => Ok(()),
        Some(c) if c.account.is_some() => {
            Err(Status::new(Code::PermissionDenied, NAME, "this is for the platform's operators (admins of micro)"))
        }
        _ => Err(Status::new(Code::Unauthenticated, NAME, "log in as an operator first")),
    }
}

/// What the handlers share.
pub(crate) struct Shared {
    pub(crate) store: micro::data::StoreHandle,
    pub(crate) sync: micro::data::SyncHandle,
    pub(crate) config: micro::data::ConfigHandle,
    pub(crate) client: Result<micro::Client, Status>,
    pub(crate) channel: Result<micro::Channel, Status>,
    /// Where people sign up (`MICRO_PLATFORM_URL`), for the links in mail.
    pub(crate) url: Option<String>,
    /// What the licence allows: the team plan is a paid feature.
    pub(crate) licence: Gate,
}

/// The platform's handlers on `service` (named [`NAME`], configured by the host), with
/// the signup page's address from `MICRO_PLATFORM_URL`.
pub fn service(service: Service) -> Service {
    let url = std::env::var("MICRO_PLATFORM_URL").ok().filter(|u| !u.is_empty());
    service_with(service, url, licence_from_env())
}

/// The licence of a platform run on its own: the file `MICRO_LICENSE` names, verified
/// against the vendor's key and `MICRO_LICENSE_KEYS` (none, or one that does not hold:
/// unlicensed, its paid features refused).
fn licence_from_env() -> Gate {
    use micro_core::licence;
    let Some(path) = std::env::var_os(licence::FILE_ENV).filter(|p| !p.is_empty()) else {
        return Gate::unlicensed();
    };
    let verified = licence::trusted_keys(std::env::var(licence::KEYS_ENV).ok().as_deref())
        .and_then(|keys| licence::load(std::path::Path::new(&path), &keys, licence::now()));
    match verified {
        Ok(Some(v)) => Gate::licensed(v),
        Ok(None) => Gate::unlicensed(),
        Err(e) => {
            tracing::warn!(error = %e, "the licence is refused: running unlicensed, the paid features are off");
            Gate::unlicensed()
        }
    }
}

/// The platform's handlers on `service`; `url` is the public address of the dashboard
/// (`https://m3o.example.com`), which mail links to; `licence` says which paid features
/// (the team plan) the installed licence allows ([`Gate::open`] in tests).
pub fn service_with(service: Service, url: Option<String>, licence: Gate) -> Service {
    let service = service.platform();
    let shared = Arc::new(Shared {
        store: service.store(),
        sync: service.sync(),
        config: service.config(),
        client: service.client(),
        channel: service.channel(),
        url: url.map(|u| u.trim_end_matches('/').to_string()),
        licence,
    });
    let service = signup::handlers(service.version(env!("CARGO_PKG_VERSION")), shared.clone());
    let service = plans::handlers(service, shared.clone());
    team::handlers(service, shared)
}
