//! `micro run`, `micro update`, `micro kill`, `micro status` and `micro logs`: services
//! run from source by the server's runtime. A local folder is packed (its enclosing
//! repository, minus what `.gitignore` leaves out) and uploaded, so a remote server runs
//! local code.

use crate::cli::{Ctx, status_err};
use crate::output;
use anyhow::{Context, Result, anyhow, bail};
use futures::StreamExt;
use micro::proto::runtime as pb;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What `micro run` and `micro update` take.
#[derive(clap::Args, Clone)]
pub(crate) struct RunArgs {
    /// A local folder (or executable), a git URL with an optional @ref, or a service name.
    source: String,
    /// The service's name (default: its manifest's, its cargo package's, else the folder's).
    #[arg(long)]
    name: Option<String>,
    /// Replicas.
    #[arg(long, default_value_t = 0)]
    instances: u32,
    /// An environment variable of every instance, K=V (repeatable).
    #[arg(long = "env", short = 'e')]
    env: Vec<String>,
    /// An environment variable read from the namespace's config when an instance starts,
    /// NAME=config.path (repeatable; secrets are decrypted), like DB_PASSWORD=db.password.
    #[arg(long = "secret")]
    secrets: Vec<String>,
    /// Memory limit per instance, like 256M or 1G.
    #[arg(long)]
    memory: Option<String>,
    /// Metadata shown by status, K=V (repeatable).
    #[arg(long = "metadata", short = 'm')]
    metadata: Vec<String>,
    /// Return once the server has the request, without waiting for running.
    #[arg(long)]
    detach: bool,
    /// How long to wait for running.
    #[arg(long, default_value = "15m")]
    timeout: String,
}

/// `micro user config`.
#[derive(clap::Subcommand)]
pub(crate) enum UserCmd {
    /// Your own settings, kept (encrypted) on the server: git.credentials.HOST is a token
    /// the runtime uses to clone private repositories from HOST for you.
    Config {
        #[command(subcommand)]
        cmd: UserConfigCmd,
    },
}

#[derive(clap::Subcommand)]
pub(crate) enum UserConfigCmd {
    /// Set one: micro user config set git.credentials.github.com TOKEN
    Set { key: String, value: String },
    /// Whether one is set (its value is never shown).
    Get { key: String },
    /// Delete one (an admin may delete another account's with --account, never read it).
    Del {
        key: String,
        /// Another account of your namespace (needs its admin scope).
        #[arg(long)]
        account: Option<String>,
    },
}

/// `micro user config set|get|del`: the logged-in account's own settings, kept sealed by
/// the auth service (any account may keep its own; no one else reads them).
pub(crate) async fn user(c: &Ctx, cmd: UserCmd) -> Result<()> {
    use micro::proto::auth as apb;
    let UserCmd::Config { cmd } = cmd;
    if c.token.is_none() {
        bail!("not logged in: micro login");
    }
    // Sent in the account's own namespace (the server acts on the token's account only).
    let namespace = crate::envs::Envs::load()?.current().credentials.map(|cr| cr.namespace);
    let c = &Ctx {
        address: c.address.clone(),
        namespace: namespace.unwrap_or_else(|| c.namespace.clone()),
        json: c.json,
        token: c.token.clone(),
        transport: c.transport.clone(),
    };
    let mut auth = apb::auth_client::AuthClient::new(c.channel()?);
    match cmd {
        UserConfigCmd::Set { key, value } => {
            auth.set_setting(settings_request(c, apb::SetSettingRequest { key: key.clone(), value })?)
                .await
                .map_err(tonic_err)?;
            output::done(c.json, serde_json::json!({"set": key}), Some(format!("set {key}")));
        }
        UserConfigCmd::Get { key } => {
            let r = auth
                .get_setting(settings_request(c, apb::GetSettingRequest { key: key.clone() })?)
                .await
                .map_err(tonic_err)?
                .into_inner();
            if !r.set {
                bail!("{key} is not set");
            }
            output::done(c.json, serde_json::json!({"key": key, "set": true}), Some(format!("{key} is set")));
        }
        UserConfigCmd::Del { key, account } => {
            auth.delete_setting(settings_request(
                c,
                apb::DeleteSettingRequest { key: key.clone(), account: account.unwrap_or_default() },
            )?)
            .await
            .map_err(tonic_err)?;
            output::done(c.json, serde_json::json!({"deleted": key}), Some(format!("deleted {key}")));
        }
    }
    Ok(())
}

/// A settings request, with a deadline.
fn settings_request<T>(c: &Ctx, msg: T) -> Result<tonic::Request<T>> {
    crate::auth::request(c, msg)
}

fn client(c: &Ctx) -> Result<pb::runtime_client::RuntimeClient<micro::Channel>> {
    Ok(pb::runtime_client::RuntimeClient::new(c.channel()?).max_decoding_message_size(64 << 20))
}

/// A request in the context's namespace (the channel adds the token), without a deadline (uploads
/// and followed logs take as long as they take).
fn request<T>(c: &Ctx, msg: T) -> Result<tonic::Request<T>> {
    crate::auth::request_unbounded(c, msg)
}

fn tonic_err(e: tonic::Status) -> anyhow::Error {
    status_err(micro::status::from_tonic(&e))
}

/// `micro run` (`update` false) and `micro update`.
pub(crate) async fn run(c: &Ctx, args: RunArgs, update: bool) -> Result<()> {
    let mut spec = pb::Service {
        name: args.name.clone().unwrap_or_default(),
        instances: args.instances,
        env: pairs(&args.env, "--env")?.into_iter().collect(),
        metadata: pairs(&args.metadata, "--metadata")?.into_iter().collect(),
        secrets: pairs(&args.secrets, "--secret")?.into_iter().collect(),
        memory: args.memory.as_deref().map(parse_size).transpose()?.unwrap_or(0),
        ..Default::default()
    };
    let timeout = crate::cli::parse_duration(&args.timeout)?;
    let path = Path::new(&args.source);
    let local = path.exists();
    let looks_local = ["./", "../", "/", "~"].iter().any(|p| args.source.starts_with(p)) || args.source == ".";
    if !local && looks_local && !args.source.trim_end_matches('/').ends_with(".git") {
        bail!("{}: no such file or folder", args.source);
    }
    if local && !update && spec.name.is_empty() {
        spec.name = default_name(&path.canonicalize()?).unwrap_or_default();
    }
    if !update && !spec.name.is_empty() {
        // Before uploading anything: is the name taken?
        let r = client(c)?.read(request(c, pb::ReadRequest { name: spec.name.clone() })?).await;
        if r.is_ok() {
            bail!("{} already runs in {}: use micro update, or micro kill first", spec.name, c.namespace);
        }
    }
    if local {
        let path = path.canonicalize().with_context(|| format!("reading {}", args.source))?;
        let (root, entry) = repository(&path);
        if spec.name.is_empty() {
            spec.name = default_name(&path).ok_or_else(|| anyhow!("cannot name {}: use --name", args.source))?;
        }
        let started = Instant::now();
        let archive = if path.is_file() { pack_file(&path)? } else { pack(&root)? };
        progress(&format!("uploading {} ({})", args.source, size(archive.len() as u64)));
        spec.upload = upload(c, archive).await?;
        spec.entrypoint = if path.is_file() { String::new() } else { entry };
        spec.source = args.source.clone();
        if std::io::stderr().is_terminal() {
            eprintln!(" done in {:.1}s", started.elapsed().as_secs_f64());
        }
    } else if update && spec.name.is_empty() && !args.source.contains(['/', ':', '@']) {
        // `micro update foo`: foo's own source again.
        spec.name = args.source.clone();
    } else {
        spec.source = args.source.clone();
    }
    let mut rt = client(c)?;
    let service = if update {
        rt.update(request(c, pb::UpdateRequest { service: Some(spec) })?).await.map_err(tonic_err)?.into_inner().service
    } else {
        rt.create(request(c, pb::CreateRequest { service: Some(spec) })?).await.map_err(tonic_err)?.into_inner().service
    };
    let service = service.ok_or_else(|| anyhow!("the server did not say which service it runs"))?;
    if args.detach {
        let status = if update { "updating" } else { "pending" };
        let v = serde_json::json!({"name": service.name, "status": status});
        output::done(c.json, v, Some(format!("{} {status}", service.name)));
        return Ok(());
    }
    wait(c, &service.name, update, timeout).await
}

/// Follows a service's status until it runs (ok) or fails (its reason).
async fn wait(c: &Ctx, name: &str, update: bool, timeout: Duration) -> Result<()> {
    let mut rt = client(c)?;
    let tty = std::io::stderr().is_terminal();
    let start = Instant::now();
    let mut last = String::new();
    // An update first goes through "updating"/"building"; wait for it to leave "running".
    let mut seen_change = !update;
    let spinner = ['-', '\\', '|', '/'];
    let mut tick = 0usize;
    loop {
        let r = rt.read(request(c, pb::ReadRequest { name: name.into() })?).await.map_err(tonic_err)?.into_inner();
        let s = r.services.into_iter().next().ok_or_else(|| anyhow!("{name} is gone"))?;
        if s.status != "running" {
            seen_change = true;
        }
        let settled = seen_change || start.elapsed() > Duration::from_secs(3);
        if s.status == "running" && settled {
            if tty {
                eprint!("\r\x1b[K");
            }
            let v = serde_json::json!({
                "name": name, "status": s.status, "version": s.version, "build": s.build, "instances": s.nodes.len(),
            });
            let text = format!("{name} running: version {} ({}), {} instance(s)", s.version, s.build, s.nodes.len());
            output::done(c.json, v, Some(text));
            return Ok(());
        }
        if s.status == "error" && settled {
            if tty {
                eprint!("\r\x1b[K");
            }
            bail!("{name} failed: {}", s.error);
        }
        if tty {
            let mut detail = String::new();
            if s.status == "building" {
                let logs = rt
                    .logs(request(c, pb::LogsRequest { name: name.into(), build: true, count: 1, follow: false })?)
                    .await;
                if let Ok(mut stream) = logs.map(|r| r.into_inner())
                    && let Some(Ok(l)) = stream.next().await
                {
                    detail = l.line.trim().chars().take(60).collect();
                }
            }
            eprint!("\r\x1b[K{} {name} {} {:>4}s  {detail}", spinner[tick % 4], s.status, start.elapsed().as_secs());
            let _ = std::io::stderr().flush();
            tick += 1;
        } else if s.status != last {
            eprintln!("{name}: {}", s.status);
        }
        last = s.status;
        if start.elapsed() > timeout {
            bail!(
                "{name} is still {last} after {}s (see micro status and micro logs --build {name})",
                timeout.as_secs()
            );
        }
        // Quick polls at first (a kept build starts in well under a second), then calmer.
        let pause = if start.elapsed() < Duration::from_secs(5) { 50 } else { 300 };
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

/// `micro kill`.
pub(crate) async fn kill(c: &Ctx, name: &str) -> Result<()> {
    client(c)?.delete(request(c, pb::DeleteRequest { name: name.into() })?).await.map_err(tonic_err)?;
    output::done(c.json, serde_json::json!({"killed": name}), Some(format!("killed {name}")));
    Ok(())
}

/// `micro status [name]`.
pub(crate) async fn status(c: &Ctx, name: Option<&str>) -> Result<()> {
    let r = client(c)?
        .read(request(c, pb::ReadRequest { name: name.unwrap_or_default().into() })?)
        .await
        .map_err(tonic_err)?
        .into_inner();
    if c.json {
        let list: Vec<serde_json::Value> = r
            .services
            .iter()
            .map(|s| {
                serde_json::json!({
                    "name": s.name, "version": s.version, "source": s.source, "status": s.status,
                    "error": s.error, "build": s.build, "updated": s.updated, "restarts": s.restarts,
                    "instances": s.instances, "memory": s.memory, "limits": s.limits, "metadata": s.metadata,
                    "isolation": s.isolation,
                    "secrets": s.secrets,
                    "nodes": s.nodes.iter().map(|n| serde_json::json!({
                        "id": n.id, "pid": n.pid, "status": n.status, "restarts": n.restarts
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        output::json(&serde_json::Value::Array(list));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = r
        .services
        .iter()
        .map(|s| {
            let mut meta: Vec<String> = s.metadata.iter().map(|(k, v)| format!("{k}={v}")).collect();
            meta.sort();
            let up = s.nodes.iter().filter(|n| n.status == "running").count();
            meta.push(format!("instances={up}/{}", s.instances.max(1)));
            meta.push(format!("restarts={}", s.restarts));
            vec![
                s.name.clone(),
                if s.version.is_empty() { "-".into() } else { s.version.clone() },
                s.source.clone(),
                s.status.clone(),
                if s.build.is_empty() { "-".into() } else { s.build.clone() },
                ago(s.updated),
                meta.join(","),
            ]
        })
        .collect();
    output::table(&["NAME", "VERSION", "SOURCE", "STATUS", "BUILD", "UPDATED", "METADATA"], &rows);
    for s in r.services.iter().filter(|s| !s.error.is_empty()) {
        println!("\n{} {}: {}", s.name, s.status, s.error);
    }
    if !r.isolation.is_empty() {
        println!("\nisolation: {}", r.isolation);
    }
    Ok(())
}

/// `micro logs`.
pub(crate) async fn logs(c: &Ctx, name: &str, follow: bool, count: u32, build: bool) -> Result<()> {
    let mut stream = client(c)?
        .logs(request(c, pb::LogsRequest { name: name.into(), build, follow, count })?)
        .await
        .map_err(tonic_err)?
        .into_inner();
    let mut out = std::io::stdout();
    while let Some(r) = stream.next().await {
        let r = r.map_err(tonic_err)?;
        // One JSON object a line with -o json.
        let line = if c.json {
            serde_json::json!({"line": r.line, "timestamp": r.timestamp, "instance": r.instance}).to_string()
        } else {
            r.line
        };
        if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
            return Ok(()); // a closed pipe
        }
    }
    Ok(())
}

async fn upload(c: &Ctx, archive: Vec<u8>) -> Result<String> {
    let chunks: Vec<pb::UploadRequest> =
        archive.chunks(1 << 20).map(|c| pb::UploadRequest { chunk: c.to_vec() }).collect();
    let r = client(c)?.upload(request(c, futures::stream::iter(chunks))?).await.map_err(tonic_err)?;
    Ok(r.into_inner().id)
}

fn progress(msg: &str) {
    if std::io::stderr().is_terminal() {
        eprint!("{msg}…");
    } else {
        eprintln!("{msg}");
    }
}

/// The repository enclosing `path` (the nearest folder with `.git`, else the folder
/// itself) and `path`'s place in it.
fn repository(path: &Path) -> (PathBuf, String) {
    let dir = if path.is_file() { path.parent().unwrap_or(path) } else { path };
    let mut at = Some(dir);
    while let Some(d) = at {
        if d.join(".git").exists() {
            let entry = dir.strip_prefix(d).unwrap_or(Path::new("")).to_string_lossy().to_string();
            return (d.to_path_buf(), entry);
        }
        at = d.parent();
    }
    (dir.to_path_buf(), String::new())
}

/// A tar.gz of `root`: what git would keep (`.gitignore`, `.git/info/exclude`), never
/// `.git` itself or a cargo target folder.
fn pack(root: &Path) -> Result<Vec<u8>> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    tar.follow_symlinks(false);
    let walk = ignore::WalkBuilder::new(root)
        .hidden(false)
        .git_ignore(true)
        .git_exclude(true)
        .git_global(false)
        .require_git(false)
        .parents(false)
        .filter_entry(|e| {
            let is_dir = e.file_type().is_some_and(|t| t.is_dir());
            e.file_name() != ".git" && !(is_dir && e.path().join("CACHEDIR.TAG").exists())
        })
        .build();
    for entry in walk {
        let entry = entry.map_err(|e| anyhow!("reading the source: {e}"))?;
        let rel = entry.path().strip_prefix(root).unwrap_or(entry.path());
        if rel.as_os_str().is_empty() {
            continue;
        }
        let kind = entry.file_type();
        if kind.is_some_and(|t| t.is_file() || t.is_symlink()) {
            tar.append_path_with_name(entry.path(), rel)
                .with_context(|| format!("packing {}", entry.path().display()))?;
        } else if kind.is_some_and(|t| t.is_dir()) {
            tar.append_dir(rel, entry.path()).with_context(|| format!("packing {}", entry.path().display()))?;
        }
    }
    let gz = tar.into_inner().context("packing the source")?;
    gz.finish().context("compressing the source")
}

/// A tar.gz of one file (a prebuilt executable), stored rather than compressed: on the
/// way to running, compressing a big binary costs more than sending it.
fn pack_file(file: &Path) -> Result<Vec<u8>> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::none());
    let mut tar = tar::Builder::new(gz);
    let name = file.file_name().ok_or_else(|| anyhow!("{} has no file name", file.display()))?;
    tar.append_path_with_name(file, name).with_context(|| format!("packing {}", file.display()))?;
    Ok(tar.into_inner()?.finish()?)
}

/// The name a folder gives its service: its `micro.toml`'s, its cargo package's, else
/// the folder's (or the executable's).
fn default_name(path: &Path) -> Option<String> {
    let name_in = |file: &str, table: Option<&str>| {
        let v: toml::Value = toml::from_str(&std::fs::read_to_string(path.join(file)).ok()?).ok()?;
        let t = match table {
            Some(t) => v.get(t)?,
            None => &v,
        };
        t.get("name")?.as_str().map(str::to_string)
    };
    if path.is_dir()
        && let Some(n) = name_in("micro.toml", None).or_else(|| name_in("Cargo.toml", Some("package")))
    {
        return Some(n);
    }
    let stem = path.file_stem()?.to_string_lossy().to_lowercase();
    Some(stem.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '-' }).collect())
}

fn pairs(kv: &[String], flag: &str) -> Result<Vec<(String, String)>> {
    kv.iter()
        .map(|p| {
            p.split_once('=')
                .filter(|(k, _)| !k.is_empty())
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| anyhow!("{flag} {p:?}: use KEY=VALUE"))
        })
        .collect()
}

/// `256M`, `1G`, `512k`, or bytes.
fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => {
            let unit = t[i..].to_ascii_lowercase();
            let mult = match unit.trim_end_matches("ib").trim_end_matches('b') {
                "" => 1,
                "k" => 1 << 10,
                "m" => 1 << 20,
                "g" => 1 << 30,
                _ => bail!("--memory {s:?}: use a size like 256M or 1G"),
            };
            (&t[..i], mult)
        }
        None => (t, 1),
    };
    let n: u64 = num.trim().parse().map_err(|_| anyhow!("--memory {s:?}: use a size like 256M or 1G"))?;
    if n == 0 {
        bail!("--memory must be more than 0");
    }
    Ok(n * mult)
}

fn size(n: u64) -> String {
    if n >= 1 << 20 { format!("{:.1} MiB", n as f64 / (1 << 20) as f64) } else { format!("{} KiB", n.div_ceil(1024)) }
}

/// How long ago a Unix-milliseconds time was.
fn ago(ms: i64) -> String {
    if ms <= 0 {
        return "-".into();
    }
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
    let s = ((now - ms) / 1000).max(0);
    match s {
        0..60 => format!("{s}s ago"),
        60..3600 => format!("{}m ago", s / 60),
        3600..86400 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256M").unwrap(), 256 << 20);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("0").is_err());
        assert!(parse_size("5X").is_err());
    }

    #[test]
    fn names_and_pairs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("Cargo.toml"), "[package]\nname = \"hello\"\n").unwrap();
        assert_eq!(default_name(dir.path()).as_deref(), Some("hello"));
        std::fs::write(dir.path().join("micro.toml"), "name = \"py-hello\"\nrun = \"x\"\n").unwrap();
        assert_eq!(default_name(dir.path()).as_deref(), Some("py-hello"));
        assert_eq!(pairs(&["A=1".into(), "B=x=y".into()], "--env").unwrap()[1], ("B".into(), "x=y".into()));
        assert!(pairs(&["=1".into()], "--env").is_err());
        assert!(pairs(&["A".into()], "--env").is_err());
    }

    #[test]
    fn packs_what_git_keeps() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join(".git")).unwrap();
        std::fs::create_dir_all(root.join("svc/target")).unwrap();
        std::fs::write(root.join("svc/target/CACHEDIR.TAG"), "x").unwrap();
        std::fs::create_dir_all(root.join("svc/out")).unwrap();
        std::fs::write(root.join(".gitignore"), "out/\n*.log\n").unwrap();
        std::fs::write(root.join("svc/main.py"), "print(1)").unwrap();
        std::fs::write(root.join("svc/debug.log"), "x").unwrap();
        std::fs::write(root.join("svc/out/big"), "x").unwrap();
        let (found, entry) = repository(&root.join("svc"));
        assert_eq!((found.as_path(), entry.as_str()), (root, "svc"));
        let archive = pack(root).unwrap();
        let mut names: Vec<String> = tar::Archive::new(flate2::read::GzDecoder::new(&archive[..]))
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().trim_end_matches('/').to_string())
            .collect();
        names.sort();
        assert_eq!(names, [".gitignore", "svc", "svc/main.py"]);
    }
}
