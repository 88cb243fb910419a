//! `micro license`: issuer keys, issuing, showing and installing the signed licence of
//! the self-hosted platform (see docs/licence.md). `keygen`, `issue` and `show FILE`
//! work offline; `show` alone and `install` ask the server (License.Show,
//! License.Install: its admins only).

use crate::cli::{Ctx, status_err};
use crate::output;
use anyhow::{Context as _, Result, anyhow, bail};
use clap::Subcommand;
use micro::proto::license as pb;
use micro_core::licence::{self, Licence, State, Verified};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

#[derive(Subcommand)]
pub(crate) enum LicenseCmd {
    /// Make an issuer keypair: the private key to a file (mode 0600), the public key to
    /// stdout (give it to servers in MICRO_LICENSE_KEYS).
    Keygen {
        /// Where to write the private key (it must not exist yet).
        #[arg(long, default_value = "license-issuer.key")]
        out: PathBuf,
    },
    /// Sign a licence: micro license issue --key issuer.key --customer Acme --email ops@acme.example
    /// --features team,billing --expires 2027-12-31 [--out acme.license]
    Issue {
        /// The issuer's private key file (from micro license keygen).
        #[arg(long)]
        key: PathBuf,
        /// Who the licence is for.
        #[arg(long)]
        customer: String,
        /// Whom to contact about it.
        #[arg(long)]
        email: String,
        /// The paid features it unlocks, comma-separated: team, billing, multi-node, marketplace, sso.
        #[arg(long)]
        features: String,
        /// Accounts it covers (0: not limited).
        #[arg(long, default_value_t = 0)]
        seats: u32,
        /// Nodes it covers (0: not limited).
        #[arg(long, default_value_t = 0)]
        nodes: u32,
        /// The day it expires (UTC), YYYY-MM-DD.
        #[arg(long, conflicts_with = "days", required_unless_present = "days")]
        expires: Option<String>,
        /// Or: it expires this many days from now.
        #[arg(long)]
        days: Option<u32>,
        /// Days it keeps working after it expires.
        #[arg(long, default_value_t = licence::DEFAULT_GRACE_DAYS)]
        grace_days: u32,
        /// Write the licence here (default: stdout).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Show a licence: a file (verified here, offline), or the server's.
    Show {
        /// A licence file; none: the server's licence.
        file: Option<PathBuf>,
    },
    /// Install a licence on the server (which verifies it); it takes effect at once.
    Install {
        /// The licence file.
        file: PathBuf,
    },
}

impl LicenseCmd {
    /// Whether the command runs without the server.
    pub(crate) fn offline(&self) -> bool {
        matches!(self, LicenseCmd::Keygen { .. } | LicenseCmd::Issue { .. } | LicenseCmd::Show { file: Some(_) })
    }
}

pub(crate) async fn license(c: &Ctx, cmd: LicenseCmd) -> Result<()> {
    match cmd {
        LicenseCmd::Keygen { out } => keygen(c, &out),
        LicenseCmd::Issue { key, customer, email, features, seats, nodes, expires, days, grace_days, out } => {
            let private = std::fs::read_to_string(&key)
                .with_context(|| format!("license issue: cannot read the key {}", key.display()))?;
            let now = licence::now();
            let expires = match (expires, days) {
                (Some(d), _) => licence::parse_date(&d)
                    .ok_or_else(|| anyhow!("license issue: --expires {d:?} is not a date: give YYYY-MM-DD"))?,
                (None, Some(0)) => bail!("license issue: --days 0: give at least 1 day"),
                (None, Some(n)) => now + u64::from(n) * 86_400,
                (None, None) => bail!("license issue: give --expires YYYY-MM-DD or --days N"),
            };
            if expires <= now {
                bail!("license issue: it would expire on {}, which has passed", licence::date(expires));
            }
            let features: Vec<&str> = features.split(',').map(str::trim).filter(|f| !f.is_empty()).collect();
            if features.is_empty() {
                bail!("license issue: --features: give some of {}", licence::FEATURES.join(", "));
            }
            if let Some(f) = features.iter().find(|f| !licence::FEATURES.contains(f)) {
                bail!("license issue: unknown feature {f:?}: give some of {}", licence::FEATURES.join(", "));
            }
            if customer.trim().is_empty() {
                bail!("license issue: --customer is empty");
            }
            let mut l = Licence::new(customer.trim(), email.trim(), &features, now, expires);
            (l.seats, l.nodes, l.grace_days) = (seats, nodes, grace_days);
            let text = licence::issue(&private, &l).map_err(|e| anyhow!("license issue: {e}"))?;
            match out {
                Some(path) => {
                    std::fs::write(&path, &text)
                        .with_context(|| format!("license issue: writing {}", path.display()))?;
                    let text = format!(
                        "issued licence {} for {} ({}), expiring on {}: {}",
                        l.id,
                        l.customer,
                        l.features.join(", "),
                        licence::date(l.expires),
                        path.display()
                    );
                    output::done(c.json, json!({"issued": l.id, "file": path, "licence": l}), Some(text));
                }
                None => print!("{text}"),
            }
            Ok(())
        }
        LicenseCmd::Show { file: Some(path) } => {
            let text = read(&path)?;
            let keys = licence::trusted_keys(std::env::var(licence::KEYS_ENV).ok().as_deref())
                .map_err(|e| anyhow!("license show: {e}"))?;
            let v = licence::verify(&text, &keys, licence::now())
                .map_err(|e| anyhow!("license show: {}: {e}", path.display()))?;
            print_verified(c, &v);
            Ok(())
        }
        LicenseCmd::Show { file: None } => {
            let mut client = pb::license_client::LicenseClient::new(c.channel()?);
            let reply = client
                .show(crate::auth::request(c, pb::ShowRequest {})?)
                .await
                .map_err(|e| status_err(micro::status::from_tonic(&e)))?
                .into_inner();
            print_reply(c, &reply);
            Ok(())
        }
        LicenseCmd::Install { file } => {
            let text = read(&file)?;
            let mut client = pb::license_client::LicenseClient::new(c.channel()?);
            let reply = client
                .install(crate::auth::request(c, pb::InstallRequest { licence: text })?)
                .await
                .map_err(|e| status_err(micro::status::from_tonic(&e)))?
                .into_inner();
            if !c.json {
                println!("installed {}", file.display());
            }
            print_reply(c, &reply);
            Ok(())
        }
    }
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("license: cannot read {}", path.display()))
}

fn keygen(c: &Ctx, out: &Path) -> Result<()> {
    let (private, public) = licence::generate_key().map_err(|e| anyhow!("license keygen: {e}"))?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options.open(out).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => {
            anyhow!("license keygen: {} exists: give another --out (a key is never overwritten)", out.display())
        }
        _ => anyhow!("license keygen: cannot create {}: {e}", out.display()),
    })?;
    std::io::Write::write_all(&mut f, format!("{private}\n").as_bytes())
        .with_context(|| format!("license keygen: writing {}", out.display()))?;
    let id = licence::key_id(&public).map_err(|e| anyhow!("license keygen: {e}"))?;
    if c.json {
        println!("{}", json!({"public_key": public, "key_id": id, "private_key_file": out}));
    } else {
        // The public key alone on stdout, for scripts; the rest is for people.
        println!("{public}");
        eprintln!(
            "the private key is in {} (keep it secret); servers trust licences it signs with MICRO_LICENSE_KEYS={public} (key id {id})",
            out.display()
        );
    }
    Ok(())
}

fn state_text(state: &str, days_left: u32) -> String {
    match state {
        "grace" => format!("expired, in grace ({days_left} days left)"),
        s => s.to_string(),
    }
}

fn licence_rows(l: &Value, state: String, issuer: &str) -> Vec<(&'static str, String)> {
    let n = |k: &str| match l[k].as_u64().unwrap_or(0) {
        0 => "not limited".to_string(),
        v => v.to_string(),
    };
    let date = |k: &str| licence::date(l[k].as_u64().unwrap_or(0));
    let features: Vec<&str> = l["features"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    vec![
        ("licence", l["id"].as_str().unwrap_or_default().to_string()),
        (
            "customer",
            format!("{} <{}>", l["customer"].as_str().unwrap_or_default(), l["email"].as_str().unwrap_or_default()),
        ),
        ("features", features.join(", ")),
        ("seats", n("seats")),
        ("nodes", n("nodes")),
        ("issued", date("issued")),
        ("expires", format!("{} (then {} days of grace)", date("expires"), l["grace_days"].as_u64().unwrap_or(0))),
        ("state", state),
        ("issuer", issuer.to_string()),
    ]
}

fn print_rows(rows: &[(&str, String)]) {
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in rows {
        println!("{k:width$}  {v}");
    }
}

fn print_verified(c: &Ctx, v: &Verified) {
    let (state, days_left) = match v.state {
        State::Valid => ("valid", 0),
        State::InGrace { days_left } => ("grace", days_left),
    };
    let l = serde_json::to_value(&v.licence).unwrap_or_default();
    if c.json {
        output::json(&json!({"state": state, "days_left": days_left, "licence": l, "issuer": v.issuer}));
    } else {
        print_rows(&licence_rows(&l, state_text(state, days_left), &v.issuer));
    }
}

fn print_reply(c: &Ctx, r: &pb::ShowReply) {
    let l = r.licence.as_ref().map(|l| {
        json!({
            "id": l.id, "customer": l.customer, "email": l.email, "seats": l.seats, "nodes": l.nodes,
            "features": l.features, "issued": l.issued, "expires": l.expires, "grace_days": l.grace_days,
        })
    });
    if c.json {
        output::json(&json!({
            "state": r.state, "days_left": r.days_left, "licence": l, "issuer": r.issuer,
            "path": r.path, "problem": r.problem,
        }));
        return;
    }
    let mut rows = match &l {
        Some(l) => licence_rows(l, state_text(&r.state, r.days_left), &r.issuer),
        None => vec![("state", "unlicensed: the platform's paid features are off".to_string())],
    };
    rows.push(("file", r.path.clone()));
    if !r.problem.is_empty() {
        rows.push(("refused", r.problem.clone()));
    }
    print_rows(&rows);
}
