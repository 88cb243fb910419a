//! `micro app …`: the namespace's static sites (the apps product). `deploy` packs a
//! folder (its regular files; a symbolic link is refused, so nothing outside it goes
//! along) as a tar archive, streams it to the namespace's blobs and has the product
//! deploy it; the rest call the product's `Apps.*` endpoints.

use crate::cli::{Ctx, status_err};
use crate::output;
use anyhow::{Context as _, Result, anyhow, bail};
use clap::Subcommand;
use futures::StreamExt;
use serde_json::{Value, json};
use std::path::Path;

#[derive(Subcommand)]
pub(crate) enum AppCmd {
    /// Deploy a static site: micro app deploy ./dist --name shop [--preview]
    Deploy {
        /// The folder of the site (its index.html at the top).
        dir: String,
        /// The app (default: the folder's name, or its parent's for dist, build, out, public).
        #[arg(long)]
        name: Option<String>,
        /// A preview: served at <name>--<deploy>, not made current.
        #[arg(long)]
        preview: bool,
    },
    /// The namespace's apps: NAME CURRENT DEPLOYS UPDATED
    List,
    /// An app's deploys, newest first: ID FILES SIZE PREVIEW CREATED (* the current one)
    Deploys {
        /// The app.
        name: String,
    },
    /// Serve an earlier deploy again, at once: micro app rollback shop [--to ID]
    Rollback {
        /// The app.
        name: String,
        /// The deploy (default: the one served before the current).
        #[arg(long)]
        to: Option<String>,
    },
    /// Delete an app and every deploy of it.
    Delete {
        /// The app.
        name: String,
    },
}

/// The app a folder deploys to by default.
fn default_name(dir: &Path) -> Option<String> {
    let abs = std::fs::canonicalize(dir).ok()?;
    let own = abs.file_name()?.to_str()?.to_ascii_lowercase();
    let name = if ["dist", "build", "out", "public", "www", "site"].contains(&own.as_str()) {
        abs.parent()?.file_name()?.to_str()?.to_ascii_lowercase()
    } else {
        own
    };
    let name: String = name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
    let name = name.trim_matches('-').split("--").filter(|p| !p.is_empty()).collect::<Vec<_>>().join("-");
    micro_apps::valid_name(&name).then_some(name)
}

/// A tar archive of `dir`'s regular files, hidden ones left out; a link is refused.
fn pack(dir: &Path) -> Result<(Vec<u8>, usize)> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut files = 0usize;
    let mut skipped = 0usize;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&d)
            .with_context(|| format!("reading {}", d.display()))?
            .collect::<Result<_, _>>()
            .with_context(|| format!("reading {}", d.display()))?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let path = e.path();
            let kind = e.file_type().with_context(|| format!("reading {}", path.display()))?;
            let rel = path.strip_prefix(dir).unwrap_or(&path);
            // Hidden files (.env, .git) stay home; .well-known is a site's.
            let hidden = e.file_name().to_str().is_some_and(|n| n.starts_with('.') && n != ".well-known");
            if hidden {
                skipped += 1;
                continue;
            }
            if kind.is_symlink() {
                bail!(
                    "{} is a symbolic link: a site's files are regular files (copy what it points to)",
                    path.display()
                );
            } else if kind.is_dir() {
                stack.push(path);
            } else if kind.is_file() {
                tar.append_path_with_name(&path, rel).with_context(|| format!("packing {}", path.display()))?;
                files += 1;
            }
        }
    }
    if files == 0 {
        bail!("{} has no files to deploy", dir.display());
    }
    if skipped > 0 {
        eprintln!("left out {skipped} hidden file(s) or folder(s) (names starting with a dot)");
    }
    Ok((tar.into_inner().context("packing the site")?, files))
}

fn size(bytes: u64) -> String {
    match bytes {
        b if b >= 1_000_000 => format!("{:.1} MB", b as f64 / 1e6),
        b if b >= 1000 => format!("{:.1} kB", b as f64 / 1e3),
        b => format!("{b} B"),
    }
}

pub(crate) async fn app(c: &Ctx, cmd: AppCmd) -> Result<()> {
    let client = c.client();
    match cmd {
        AppCmd::Deploy { dir, name, preview } => {
            let path = Path::new(&dir);
            if !path.is_dir() {
                bail!("{dir} is not a folder");
            }
            let name = match name.or_else(|| default_name(path)) {
                Some(n) => n,
                None => bail!("no app name from the folder {dir}: give --name"),
            };
            if !micro_apps::valid_name(&name) {
                bail!("{name:?} is not an app name: 1 to 40 lowercase letters, digits and single hyphens");
            }
            let (archive, files) = pack(path)?;
            let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
            let key = format!("{name}-{stamp}-{}.tar", std::process::id());
            let chunks = futures::stream::iter(
                archive.chunks(1 << 20).map(|c| Ok(bytes::Bytes::copy_from_slice(c))).collect::<Vec<_>>(),
            )
            .boxed();
            c.data()
                .blob
                .put(&c.namespace, micro_apps::UPLOADS, &key, "application/x-tar", chunks)
                .await
                .map_err(status_err)?;
            let req = json!({"name": name, "archive": key, "preview": preview});
            let reply = client.call_json(micro_apps::NAME, "Apps.Deploy", &req).await.map_err(status_err)?;
            if c.json {
                output::json(&reply);
                return Ok(());
            }
            let d = &reply["deploy"];
            let id = d["id"].as_str().unwrap_or_default();
            println!("deployed {name}: deploy {id} ({files} files, {})", size(d["size"].as_u64().unwrap_or(0)));
            if preview {
                println!(
                    "a preview: served at {name}--{id} (the app's host, or /apps/{name}--{id}/); the app still serves its current deploy"
                );
            } else {
                println!(
                    "live at /apps/{name}/ on the API, and on the app's own host (<app>.<namespace>.<hosting domain>)"
                );
            }
        }
        AppCmd::List => {
            let reply = client.call_json(micro_apps::NAME, "Apps.List", &json!({})).await.map_err(status_err)?;
            if c.json {
                output::json(&reply);
                return Ok(());
            }
            let rows: Vec<Vec<String>> = reply["apps"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|a| {
                    vec![
                        a["name"].as_str().unwrap_or_default().to_string(),
                        a["current"].as_str().unwrap_or("-").to_string(),
                        (a["history"].as_array().map_or(0, Vec::len) + usize::from(a["current"].is_string()))
                            .to_string(),
                        micro_core::time::utc(a["updated"].as_u64().unwrap_or(0) * 1000)
                            .get(..16)
                            .unwrap_or_default()
                            .to_string(),
                    ]
                })
                .collect();
            output::table(&["NAME", "CURRENT", "DEPLOYS", "UPDATED"], &rows);
        }
        AppCmd::Deploys { name } => {
            let reply =
                client.call_json(micro_apps::NAME, "Apps.Get", &json!({"name": name})).await.map_err(status_err)?;
            if c.json {
                output::json(&reply);
                return Ok(());
            }
            let current = reply["app"]["current"].as_str().unwrap_or_default().to_string();
            let rows: Vec<Vec<String>> = reply["deploys"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|d: &Value| {
                    let id = d["id"].as_str().unwrap_or_default();
                    vec![
                        if id == current { format!("{id} *") } else { id.to_string() },
                        d["files"].to_string(),
                        size(d["size"].as_u64().unwrap_or(0)),
                        if d["preview"] == Value::Bool(true) { "yes".into() } else { "no".into() },
                        micro_core::time::utc(d["created"].as_u64().unwrap_or(0) * 1000)
                            .get(..16)
                            .unwrap_or_default()
                            .to_string(),
                    ]
                })
                .collect();
            output::table(&["ID", "FILES", "SIZE", "PREVIEW", "CREATED"], &rows);
        }
        AppCmd::Rollback { name, to } => {
            let reply = client
                .call_json(micro_apps::NAME, "Apps.Rollback", &json!({"name": name, "to": to}))
                .await
                .map_err(status_err)?;
            if c.json {
                output::json(&reply);
                return Ok(());
            }
            let current = reply["current"].as_str().ok_or_else(|| anyhow!("the answer names no current deploy"))?;
            println!("{name} serves deploy {current} again");
        }
        AppCmd::Delete { name } => {
            client.call_json(micro_apps::NAME, "Apps.Delete", &json!({"name": name})).await.map_err(status_err)?;
            if c.json {
                output::json(&json!({"deleted": name}));
            } else {
                println!("deleted app {name}");
            }
        }
    }
    Ok(())
}
