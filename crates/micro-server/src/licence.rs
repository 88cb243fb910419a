//! Licensing of the self-hosted platform: the server reads its licence from
//! `<data_dir>/license` (or `MICRO_LICENSE`'s file), verifies it offline against the
//! vendor's key and `MICRO_LICENSE_KEYS`, and keeps the verdict in a
//! [`Gate`](micro_core::licence::Gate) the products check their paid features with.
//!
//! A licence that does not hold (altered, expired past its grace, another issuer's) is
//! refused with a warning and the server runs unlicensed: it keeps serving everything
//! that is free, so a lapsed or broken licence never takes a running platform down; only
//! paid features are refused, each with what to do. The licence is verified again every
//! day (a licence in grace is warned about each day) and whenever its file changes.
//!
//! The service `license` shows the licence (`License.Show`) and installs a new one
//! (`License.Install`: verified, then written to the licence file; it takes effect at
//! once), for the server's admins only (see `guard`).

use micro::proto::license as pb;
use micro_core::licence::{self, Gate, LicenceError, State, Verified};
use micro_core::{Code, Status};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

/// The licence file's name in the data dir.
pub const LICENSE_FILE: &str = "license";

/// How often the licence file is looked at for changes.
const POLL: Duration = Duration::from_secs(5);

/// How often the licence is verified again, changed or not.
const DAILY: Duration = Duration::from_secs(86_400);

/// Where the server's licence comes from: `MICRO_LICENSE` (a file; default `license` in
/// the data dir) and `MICRO_LICENSE_KEYS` (issuer public keys trusted besides the
/// vendor's, comma-separated base64: for operators who run their own issuer, and tests).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LicenceSettings {
    /// The licence file (`MICRO_LICENSE`); default `license` in the data dir.
    pub file: Option<PathBuf>,
    /// Issuer keys trusted besides the vendor's (`MICRO_LICENSE_KEYS`).
    pub keys: Vec<String>,
}

impl LicenceSettings {
    /// Reads `MICRO_LICENSE` and `MICRO_LICENSE_KEYS` through `env`.
    pub(crate) fn from_env(env: &impl Fn(&str) -> Option<String>) -> Result<LicenceSettings, crate::Error> {
        let file = env(licence::FILE_ENV).filter(|v| !v.trim().is_empty()).map(PathBuf::from);
        let extra = env(licence::KEYS_ENV);
        // Checks each key; the vendor's comes first.
        let keys = licence::trusted_keys(extra.as_deref()).map_err(|e| crate::Error::Config(e.to_string()))?;
        Ok(LicenceSettings { file, keys: keys.into_iter().skip(1).collect() })
    }

    /// The licence file of a server with data dir `data_dir`.
    pub fn path(&self, data_dir: &Path) -> PathBuf {
        self.file.clone().unwrap_or_else(|| data_dir.join(LICENSE_FILE))
    }

    fn trusted(&self) -> Vec<String> {
        std::iter::once(licence::VENDOR_PUBLIC_KEY.to_string()).chain(self.keys.iter().cloned()).collect()
    }
}

/// The file as last seen: its modification time and length.
type Stamp = Option<(SystemTime, u64)>;

/// This node's licence: the gate the products share, the file it comes from, and why
/// the file was refused if it was. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Licensing {
    gate: Gate,
    path: PathBuf,
    trusted: Arc<Vec<String>>,
    problem: Arc<Mutex<Option<String>>>,
    seen: Arc<Mutex<Stamp>>,
    /// Installs one at a time.
    install: Arc<tokio::sync::Mutex<()>>,
}

fn stamp(path: &Path) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

impl Licensing {
    /// Reads and verifies the licence of a server configured by `config`, logging the
    /// verdict.
    pub(crate) fn load(config: &crate::Config) -> Licensing {
        let l = Licensing {
            gate: Gate::unlicensed(),
            path: config.licence.path(&config.data_dir),
            trusted: Arc::new(config.licence.trusted()),
            problem: Arc::default(),
            seen: Arc::default(),
            install: Arc::default(),
        };
        l.reload(true);
        l
    }

    /// The gate the products check their paid features with.
    pub(crate) fn gate(&self) -> Gate {
        self.gate.clone()
    }

    /// Reads the file again and installs what holds; `report` logs the verdict even
    /// when it did not change (at start and each day).
    fn reload(&self, report: bool) {
        *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = stamp(&self.path);
        let before = self.gate.state().map(|v| v.licence.id);
        let path = self.path.display().to_string();
        let verdict = licence::load(&self.path, &self.trusted, licence::now()).map_err(|e| e.to_string()).transpose();
        let changed = |id: Option<&str>| before.as_deref() != id;
        match verdict {
            None => {
                if report || changed(None) {
                    tracing::info!(
                        path,
                        "no licence: the platform's paid features are off (micro license install FILE)"
                    );
                }
                self.set(None, None);
            }
            Some(Err(problem)) => {
                tracing::warn!(
                    path,
                    problem,
                    "the licence is refused: running unlicensed, the platform's paid features are off"
                );
                self.set(None, Some(problem));
            }
            Some(Ok(v)) => {
                if report || changed(Some(&v.licence.id)) {
                    log_licence(&v, &path);
                }
                self.set(Some(v), None);
            }
        }
    }

    fn set(&self, v: Option<Verified>, problem: Option<String>) {
        self.gate.set(v);
        *self.problem.lock().unwrap_or_else(|e| e.into_inner()) = problem;
    }

    /// Verifies the file again each day and whenever it changes, until `shutdown`.
    pub(crate) async fn watch(self, mut shutdown: watch::Receiver<bool>) {
        let mut poll = tokio::time::interval(POLL);
        let mut daily = tokio::time::interval_at(tokio::time::Instant::now() + DAILY, DAILY);
        loop {
            tokio::select! {
                _ = shutdown.wait_for(|v| *v) => return,
                _ = daily.tick() => self.reload(true),
                _ = poll.tick() => {
                    let now = stamp(&self.path);
                    if *self.seen.lock().unwrap_or_else(|e| e.into_inner()) != now {
                        self.reload(false);
                    }
                }
            }
        }
    }

    /// Verifies `text` and installs it: written to the licence file, in force at once.
    pub(crate) async fn install(&self, text: &str) -> Result<Verified, Status> {
        let v = licence::verify(text, &self.trusted, licence::now()).map_err(refusal)?;
        let _one = self.install.lock().await;
        write_private(&self.path, text.trim_end().as_bytes())
            .await
            .map_err(|e| Status::internal("license", format!("cannot write {}: {e}", self.path.display())))?;
        *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = stamp(&self.path);
        self.set(Some(v.clone()), None);
        log_licence(&v, &self.path.display().to_string());
        Ok(v)
    }

    /// What `License.Show` answers.
    pub(crate) fn show(&self) -> pb::ShowReply {
        let problem = self.problem.lock().unwrap_or_else(|e| e.into_inner()).clone().unwrap_or_default();
        let mut reply = pb::ShowReply {
            state: "unlicensed".into(),
            path: self.path.display().to_string(),
            problem,
            ..Default::default()
        };
        if let Some(v) = self.gate.state() {
            reply.state = match v.state {
                State::Valid => "valid".into(),
                State::InGrace { days_left } => {
                    reply.days_left = days_left;
                    "grace".into()
                }
            };
            reply.issuer = v.issuer;
            reply.licence = Some(wire(v.licence));
        }
        reply
    }
}

fn log_licence(v: &Verified, path: &str) {
    let (customer, features) = (&v.licence.customer, v.licence.features.join(","));
    let expires = licence::date(v.licence.expires);
    match v.state {
        State::Valid => tracing::info!(path, id = %v.licence.id, customer, features, expires, "licensed"),
        State::InGrace { days_left } => tracing::warn!(
            path,
            id = %v.licence.id,
            customer,
            features,
            expires,
            days_left,
            "the licence expired: its paid features stop at the end of its grace period; install a new one (micro license install FILE)"
        ),
    }
}

/// A refused licence, as callers see it.
fn refusal(e: LicenceError) -> Status {
    Status::new(Code::InvalidArgument, "license", format!("licence refused: {e}"))
}

/// Writes `bytes` to `path` through a private temporary file and a rename, so a reader
/// sees the old licence or the new, never half of one.
async fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", uuid::Uuid::new_v4().simple()));
    let mut options = tokio::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(0o600);
    let written = async {
        use tokio::io::AsyncWriteExt;
        let mut f = options.open(&tmp).await?;
        f.write_all(bytes).await?;
        f.write_all(b"\n").await?;
        f.sync_all().await?;
        tokio::fs::rename(&tmp, path).await
    };
    let result = written.await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(&tmp).await;
    }
    result
}

fn wire(l: licence::Licence) -> pb::Licence {
    pb::Licence {
        id: l.id,
        customer: l.customer,
        email: l.email,
        seats: l.seats,
        nodes: l.nodes,
        features: l.features,
        issued: l.issued as i64,
        expires: l.expires as i64,
        grace_days: l.grace_days,
    }
}

/// The `license` core service (the server's admins only: see `guard`).
pub(crate) struct LicenseService {
    pub(crate) licensing: Licensing,
}

#[tonic::async_trait]
impl pb::license_server::License for LicenseService {
    async fn show(
        &self,
        _req: tonic::Request<pb::ShowRequest>,
    ) -> Result<tonic::Response<pb::ShowReply>, tonic::Status> {
        Ok(tonic::Response::new(self.licensing.show()))
    }

    async fn install(
        &self,
        req: tonic::Request<pb::InstallRequest>,
    ) -> Result<tonic::Response<pb::ShowReply>, tonic::Status> {
        let by = micro::auth::Caller::of(&req).and_then(|c| c.id()).unwrap_or_default().to_string();
        let v = self.licensing.install(&req.get_ref().licence).await.map_err(|e| {
            tracing::warn!(by, error = %e, "a licence was refused");
            micro::status::to_tonic(&e)
        })?;
        tracing::info!(by, id = %v.licence.id, "installed a licence");
        Ok(tonic::Response::new(self.licensing.show()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use micro_core::licence::Licence;

    fn config(dir: &Path, keys: Vec<String>) -> crate::Config {
        crate::Config {
            data_dir: dir.to_path_buf(),
            licence: LicenceSettings { file: None, keys },
            ..Default::default()
        }
    }

    #[test]
    fn settings_from_env() {
        let (_, public) = licence::generate_key().unwrap();
        let env = |k: &str| match k {
            "MICRO_LICENSE" => Some("/etc/micro/license".to_string()),
            "MICRO_LICENSE_KEYS" => Some(public.clone()),
            _ => None,
        };
        let s = LicenceSettings::from_env(&env).unwrap();
        assert_eq!(s.path(Path::new("/data")), PathBuf::from("/etc/micro/license"));
        assert_eq!(s.keys, vec![public.clone()]);
        assert_eq!(s.trusted().len(), 2);
        let bad = |k: &str| (k == "MICRO_LICENSE_KEYS").then(|| "nope".to_string());
        assert!(LicenceSettings::from_env(&bad).unwrap_err().to_string().contains("MICRO_LICENSE_KEYS"));
        assert_eq!(LicenceSettings::default().path(Path::new("/data")), PathBuf::from("/data/license"));
    }

    #[tokio::test]
    async fn loads_installs_and_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let (private, public) = licence::generate_key().unwrap();
        let now = licence::now();
        let l = Licensing::load(&config(dir.path(), vec![public]));
        assert_eq!(l.show().state, "unlicensed");
        assert!(l.gate().check("team").is_err());

        // A broken file: refused, the reason shown.
        std::fs::write(dir.path().join(LICENSE_FILE), "{}").unwrap();
        l.reload(false);
        assert!(l.show().problem.starts_with("not a licence file"), "{}", l.show().problem);

        let text = licence::issue(&private, &Licence::new("Acme", "a@b.c", &["team"], now, now + 86_400)).unwrap();
        l.install(&text).await.unwrap();
        assert!(l.gate().check("team").is_ok());
        let shown = l.show();
        assert_eq!((shown.state.as_str(), shown.problem.as_str()), ("valid", ""));
        assert_eq!(shown.licence.unwrap().customer, "Acme");
        // Kept across a restart.
        let again = Licensing::load(&config(dir.path(), l.trusted[1..].to_vec()));
        assert!(again.gate().check("team").is_ok());

        // Another issuer's: refused, the installed one stays.
        let (other, _) = licence::generate_key().unwrap();
        let text = licence::issue(&other, &Licence::new("Acme", "a@b.c", &["team"], now, now + 86_400)).unwrap();
        let err = l.install(&text).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.detail().contains("not trusted"), "{}", err.detail());
        assert!(l.gate().check("team").is_ok());
    }
}
