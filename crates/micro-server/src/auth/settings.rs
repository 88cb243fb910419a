//! Each account's own settings (`micro user config`): today `git.credentials.HOST`, a
//! token the runtime clones the account's private repositories with.
//!
//! They live in the auth database (which neither the store nor the config service
//! reaches), one record per account, every value sealed (see [`crate::sealed`]) and
//! bound to its account and key. The RPCs act on the account of the caller's verified
//! token only; an admin of the namespace may delete another account's setting but never
//! read one; the runtime reads the owner's server-side.

use super::{AuthService, t};
use micro::proto::auth as pb;
use micro_core::store::{Query, Record, Table};
use micro_core::{Code, Status as MicroStatus};
use serde_json::{Map, Value};
use tonic::{Request, Response, Status};

/// The largest setting value, in bytes.
const MAX_VALUE: usize = 16 * 1024;
/// The prefix of the only kind of setting there is.
const GIT_CREDENTIALS: &str = "git.credentials.";

/// Checks a setting's key: `git.credentials.HOST`.
fn check_key(key: &str) -> Result<(), MicroStatus> {
    let host = key.strip_prefix(GIT_CREDENTIALS).unwrap_or_default();
    let ok = !host.is_empty()
        && host.len() <= 253
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]_".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(MicroStatus::bad_request("auth", format!("unknown user setting {key:?}: use git.credentials.HOST")))
    }
}

/// What a setting's sealed value is bound to: its account and key.
fn sealed_path(account: &str, key: &str) -> Vec<String> {
    use micro_core::config::encode_segment;
    vec!["settings".into(), encode_segment(account), encode_segment(key)]
}

impl AuthService {
    pub(super) fn settings_table(ns: &str) -> Table {
        Table::new(ns, "settings")
    }

    /// The settings of an account: key → sealed value.
    async fn load_settings(&self, ns: &str, account: &str) -> Result<Map<String, Value>, MicroStatus> {
        match self.inner.store.read(&Self::settings_table(ns), account, &Query::default()).await {
            Ok(mut r) => match r.pop() {
                Some(rec) => serde_json::from_slice(&rec.value)
                    .map_err(|e| MicroStatus::internal("auth", format!("stored settings: {e}"))),
                None => Ok(Map::new()),
            },
            Err(e) if e.code() == Code::NotFound => Ok(Map::new()),
            Err(e) => Err(e),
        }
    }

    async fn save_settings(&self, ns: &str, account: &str, settings: &Map<String, Value>) -> Result<(), MicroStatus> {
        let table = Self::settings_table(ns);
        if settings.is_empty() {
            return match self.inner.store.delete(&table, account).await {
                Err(e) if e.code() != Code::NotFound => Err(e),
                _ => Ok(()),
            };
        }
        let value = serde_json::to_vec(settings).map_err(|e| MicroStatus::internal("auth", e.to_string()))?;
        self.inner.store.write(&table, &Record::new(account, value), None).await
    }

    /// The value of `key` of account `account` of `ns`, decrypted: for the server's own
    /// use (the runtime cloning the account's repositories), never for a caller.
    pub(crate) async fn setting(&self, ns: &str, account: &str, key: &str) -> Result<Option<String>, MicroStatus> {
        let settings = self.load_settings(ns, account).await?;
        let Some(marker) = settings.get(key) else { return Ok(None) };
        match self.inner.settings.open(ns, &sealed_path(account, key), marker).await? {
            Value::String(s) => Ok(Some(s)),
            _ => Err(MicroStatus::new(Code::DataLoss, "auth", format!("setting {key:?} is not text"))),
        }
    }

    /// Forgets every setting of an account (when it is deleted).
    pub(crate) async fn delete_settings(&self, ns: &str, account: &str) -> Result<(), MicroStatus> {
        self.save_settings(ns, account, &Map::new()).await
    }

    /// The caller's account (namespace, id), from its verified token only.
    fn own_account<T>(&self, req: &Request<T>) -> Result<(String, String), MicroStatus> {
        let a = Self::caller(req).ok_or_else(|| MicroStatus::new(Code::Unauthenticated, "auth", "log in first"))?;
        // Settings are the team's (credentials for building its services), not its app users'.
        if a.kind == micro_core::auth::AccountType::App {
            return Err(MicroStatus::new(Code::PermissionDenied, "auth", "app users have no settings here"));
        }
        Ok((a.namespace.clone(), a.id.clone()))
    }

    pub(super) async fn handle_set_setting(
        &self,
        req: Request<pb::SetSettingRequest>,
    ) -> Result<Response<pb::SetSettingResponse>, Status> {
        let (ns, account) = self.own_account(&req).map_err(t)?;
        let r = req.into_inner();
        check_key(&r.key).map_err(t)?;
        if r.value.is_empty() || r.value.len() > MAX_VALUE {
            return Err(t(MicroStatus::bad_request("auth", format!("a setting is 1 to {MAX_VALUE} bytes"))));
        }
        let sealed =
            self.inner.settings.seal(&ns, &sealed_path(&account, &r.key), &Value::String(r.value)).await.map_err(t)?;
        let mut settings = self.load_settings(&ns, &account).await.map_err(t)?;
        settings.insert(r.key, sealed);
        self.save_settings(&ns, &account, &settings).await.map_err(t)?;
        Ok(Response::new(pb::SetSettingResponse {}))
    }

    pub(super) async fn handle_get_setting(
        &self,
        req: Request<pb::GetSettingRequest>,
    ) -> Result<Response<pb::GetSettingResponse>, Status> {
        let (ns, account) = self.own_account(&req).map_err(t)?;
        let key = req.into_inner().key;
        check_key(&key).map_err(t)?;
        let set = self.load_settings(&ns, &account).await.map_err(t)?.contains_key(&key);
        Ok(Response::new(pb::GetSettingResponse { set }))
    }

    pub(super) async fn handle_delete_setting(
        &self,
        req: Request<pb::DeleteSettingRequest>,
    ) -> Result<Response<pb::DeleteSettingResponse>, Status> {
        let (ns, own) = self.own_account(&req).map_err(t)?;
        let r = req.get_ref();
        let account = if r.account.is_empty() || r.account == own {
            own
        } else {
            // Another account's, in the caller's own namespace only.
            self.require_admin(&req, &ns).map_err(t)?;
            r.account.clone()
        };
        let key = req.into_inner().key;
        check_key(&key).map_err(t)?;
        let mut settings = self.load_settings(&ns, &account).await.map_err(t)?;
        if settings.remove(&key).is_none() {
            return Err(t(MicroStatus::not_found("auth", format!("{key} is not set"))));
        }
        self.save_settings(&ns, &account, &settings).await.map_err(t)?;
        Ok(Response::new(pb::DeleteSettingResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert!(check_key("git.credentials.github.com").is_ok());
        assert!(check_key("git.credentials.127.0.0.1:8443").is_ok());
        for bad in ["git.token", "git.credentials.", "git.credentials.a/b", "micro.users.x"] {
            assert!(check_key(bad).is_err(), "{bad}");
        }
        assert_ne!(sealed_path("a", "git.credentials.x"), sealed_path("b", "git.credentials.x"));
    }
}
