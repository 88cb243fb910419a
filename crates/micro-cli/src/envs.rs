//! Environments: named servers in `~/.micro/config` (mode 0600), `local` by default.

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Serialize, Deserialize, Default)]
pub(crate) struct Envs {
    #[serde(default)]
    pub(crate) current: String,
    #[serde(default)]
    pub(crate) envs: BTreeMap<String, Env>,
}

#[derive(Serialize, Deserialize, Clone, Default)]
pub(crate) struct Env {
    pub(crate) address: String,
    #[serde(default)]
    pub(crate) namespace: String,
    /// Credentials after `micro login` (kept in this 0600 file only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) credentials: Option<Credentials>,
    /// A CA certificate (PEM file) the server's TLS certificate is trusted by, besides the
    /// public roots (`micro server` with `MICRO_TLS=auto` sets it for `local`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) ca: Option<String>,
    /// Who logged in (`micro login`): the person `micro team` acts as, whichever
    /// namespace `micro namespace switch` moved to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) person: Option<Credentials>,
    /// Credentials of the team namespaces switched to, by namespace.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) switched: BTreeMap<String, Credentials>,
}

/// Tokens of a logged-in account.
#[derive(Serialize, Deserialize, Clone)]
pub(crate) struct Credentials {
    pub(crate) account: String,
    pub(crate) namespace: String,
    pub(crate) access_token: String,
    pub(crate) refresh_token: String,
    /// Unix seconds when the access token expires.
    pub(crate) expiry: u64,
}

fn path() -> PathBuf {
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".micro").join("config")
}

impl Envs {
    pub(crate) fn load() -> Result<Envs> {
        let p = path();
        let mut e: Envs = match std::fs::read_to_string(&p) {
            Ok(t) => serde_json::from_str(&t).with_context(|| format!("{} is not valid", p.display()))?,
            Err(_) => Envs::default(),
        };
        e.envs.entry("local".into()).or_insert(Env {
            address: micro::DEFAULT_SERVER.into(),
            namespace: "micro".into(),
            credentials: None,
            ca: None,
            person: None,
            switched: BTreeMap::new(),
        });
        if e.current.is_empty() {
            e.current = "local".into();
        }
        Ok(e)
    }

    pub(crate) fn save(&self) -> Result<()> {
        let p = path();
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&p, serde_json::to_vec_pretty(self)?)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))?;
        }
        Ok(())
    }

    pub(crate) fn current(&self) -> Env {
        self.envs.get(&self.current).cloned().unwrap_or(Env {
            address: micro::DEFAULT_SERVER.into(),
            namespace: "micro".into(),
            credentials: None,
            ca: None,
            person: None,
            switched: BTreeMap::new(),
        })
    }

    /// The current environment, to change.
    pub(crate) fn current_mut(&mut self) -> &mut Env {
        let name = self.current.clone();
        self.envs.entry(name).or_insert(Env {
            address: micro::DEFAULT_SERVER.into(),
            namespace: "micro".into(),
            credentials: None,
            ca: None,
            person: None,
            switched: BTreeMap::new(),
        })
    }

    pub(crate) fn set(&mut self, name: &str) -> Result<()> {
        if !self.envs.contains_key(name) {
            bail!("no environment {name:?}; add it with: micro env add {name} <host:port>");
        }
        self.current = name.to_string();
        Ok(())
    }
}
