//! Where a service's code comes from: an uploaded archive, a git repository at a ref,
//! or a short name resolved against the services repository.

use super::egress::Remote;
use super::sandbox::{Jail, Sandbox, Sandboxed};
use micro_core::Status;
use std::path::{Component, Path, PathBuf};
use tokio::process::Command;

const ID: &str = "runtime";

/// A source, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    /// An uploaded tar.gz (by its id).
    Upload(String),
    /// A git repository, at a ref (default: its default branch), with the service in
    /// a sub-folder.
    Git {
        url: String,
        reference: Option<String>,
        path: String,
        /// Named by a short name: a folder of the operator's services repository.
        configured: bool,
    },
}

/// Parses what the user gave: an upload, a git URL (`https://…`, `ssh://…`,
/// `git@…`, `file://…`, a path ending in `.git`, or `github.com/org/repo/sub`) with
/// an optional `@ref`, or a short name looked up in `repo`.
pub(crate) fn parse(source: &str, upload: &str, repo: Option<&str>) -> Result<Source, Status> {
    if !upload.is_empty() {
        if upload.len() != 64 || !upload.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Status::bad_request(ID, format!("invalid upload id {upload:?}")));
        }
        return Ok(Source::Upload(upload.to_string()));
    }
    let source = source.trim();
    if source.is_empty() {
        return Err(Status::bad_request(ID, "a source is needed: a local folder, a git URL or a service name"));
    }
    // The ref: after the last '@' that is not part of user@host.
    let (spec, reference) = match source.rsplit_once('@') {
        Some((s, r)) if !s.is_empty() && !r.is_empty() && !r.contains(['/', ':']) => (s, Some(r.to_string())),
        _ => (source, None),
    };
    if let Some(rest) = spec.strip_prefix("github.com/").or_else(|| spec.strip_prefix("gitlab.com/")) {
        let host = &spec[..spec.len() - rest.len() - 1];
        let parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
        if parts.len() < 2 {
            return Err(Status::bad_request(ID, format!("{source:?}: use {host}/org/repo[/path][@ref]")));
        }
        let url = format!("https://{host}/{}/{}", parts[0], parts[1].trim_end_matches(".git"));
        return Ok(Source::Git { url, reference, path: parts[2..].join("/"), configured: false });
    }
    let is_url = ["https://", "http://", "ssh://", "git://", "file://", "git@"].iter().any(|p| spec.starts_with(p));
    if is_url || spec.ends_with(".git") || spec.starts_with('/') {
        // A sub-folder after "//" past the scheme: file:///srv/repo.git//services/foo
        let skip = spec.find("://").map(|i| i + 3).unwrap_or(0);
        let (url, path) = match spec[skip..].find("//") {
            Some(i) => (&spec[..skip + i], &spec[skip + i + 2..]),
            None => (spec, ""),
        };
        return Ok(Source::Git {
            url: url.to_string(),
            reference,
            path: path.trim_matches('/').to_string(),
            configured: false,
        });
    }
    // A short name: a folder of the services repository.
    let valid =
        spec.split('/').all(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)));
    match repo {
        Some(repo) if valid && !spec.starts_with('.') => {
            // github.com/org/repo/name, or any other repository's folder after "//".
            let repo = repo.trim_end_matches('/');
            let sep = if repo.starts_with("github.com/") || repo.starts_with("gitlab.com/") { "/" } else { "//" };
            let at = reference.map(|r| format!("@{r}")).unwrap_or_default();
            match parse(&format!("{repo}{sep}{spec}{at}"), "", None)? {
                Source::Git { url, reference, path, .. } => Ok(Source::Git { url, reference, path, configured: true }),
                upload => Ok(upload),
            }
        }
        Some(_) => Err(Status::bad_request(
            ID,
            format!("{source:?} is not a source: use a local folder, a git URL or a service name"),
        )),
        None => Err(Status::bad_request(
            ID,
            format!(
                "{source:?} is neither a git URL nor an upload, and no services repository is configured (MICRO_RUNTIME_REPO)"
            ),
        )),
    }
}

/// Checks a sub-folder: relative, without `..`.
pub(crate) fn check_entry(entry: &str) -> Result<PathBuf, Status> {
    let p = Path::new(entry.trim_matches('/'));
    if p.components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir)) {
        Ok(p.to_path_buf())
    } else {
        Err(Status::bad_request(ID, format!("invalid entrypoint {entry:?}: a folder inside the source")))
    }
}

/// Unpacks a tar.gz into `dest`, refusing entries that would land outside it and
/// anything but files, folders and symlinks inside the tree.
pub(crate) fn unpack(archive: &Path, dest: &Path) -> Result<(), Status> {
    let file = std::fs::File::open(archive).map_err(|e| Status::internal(ID, format!("opening the upload: {e}")))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file)));
    tar.set_preserve_permissions(true);
    std::fs::create_dir_all(dest).map_err(|e| Status::internal(ID, format!("creating {}: {e}", dest.display())))?;
    let entries = tar.entries().map_err(|e| Status::bad_request(ID, format!("the upload is not a tar.gz: {e}")))?;
    // Folders get their times back last (unpacking into them changes them), so cargo's
    // change detection sees an unchanged folder as unchanged.
    let mut folders = Vec::new();
    for entry in entries {
        let mut entry = entry.map_err(|e| Status::bad_request(ID, format!("a damaged archive: {e}")))?;
        let kind = entry.header().entry_type();
        if !(kind.is_file() || kind.is_dir() || kind.is_symlink()) {
            continue;
        }
        if kind.is_dir()
            && let (Ok(path), Ok(mtime)) = (entry.path(), entry.header().mtime())
        {
            folders.push((dest.join(path), std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime)));
        }
        // unpack_in refuses paths escaping dest (.., absolute).
        let ok = entry.unpack_in(dest).map_err(|e| Status::bad_request(ID, format!("unpacking the archive: {e}")))?;
        if !ok {
            return Err(Status::bad_request(ID, "the archive has a path outside its folder"));
        }
    }
    for (dir, mtime) in folders.into_iter().rev() {
        if dir.starts_with(dest)
            && let Ok(f) = std::fs::File::open(&dir)
        {
            let _ = f.set_modified(mtime);
        }
    }
    Ok(())
}

/// The host of an HTTP(S) URL, whose stored credentials a clone may use.
pub(crate) fn http_host(url: &str) -> Option<&str> {
    let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://"))?;
    let authority = rest.split('/').next()?;
    let host = authority.rsplit('@').next()?;
    Some(host.split(':').next().unwrap_or(host)).filter(|h| !h.is_empty())
}

/// How a clone is confined: a tenant's runs in the sandbox, to the addresses its host
/// was checked at, HTTP(S) only and without redirects; the operator's runs as the
/// server (it may fetch from the server's own disk or with its ssh keys).
pub(crate) enum Confine<'a> {
    /// As the server.
    Server,
    /// In `sandbox`, as namespace `namespace`'s user, changing only `work` (the clone
    /// goes into a folder of it).
    Sandbox { sandbox: &'a Sandbox, namespace: &'a str, remote: &'a Remote, work: &'a Path },
}

/// Clones `url` at `reference` into `dest` (without its history); returns the commit.
/// A `token` goes as HTTP basic auth in git's environment, never on its command line.
pub(crate) async fn clone(
    url: &str,
    reference: Option<&str>,
    dest: &Path,
    token: Option<&str>,
    confine: Confine<'_>,
) -> Result<String, Status> {
    use base64::Engine;
    let mut env = vec![("GIT_TERMINAL_PROMPT".to_string(), "0".to_string())];
    if let Some(t) = token {
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{t}"));
        env.extend([
            ("GIT_CONFIG_COUNT".to_string(), "1".to_string()),
            ("GIT_CONFIG_KEY_0".to_string(), "http.extraHeader".to_string()),
            ("GIT_CONFIG_VALUE_0".to_string(), format!("Authorization: Basic {basic}")),
        ]);
    }
    let url = match &confine {
        Confine::Sandbox { remote, .. } => remote.url.as_str(),
        Confine::Server => url,
    };
    let git = |args: &[&str], cwd: &Path| {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let mut c = match &confine {
            Confine::Server => {
                let mut c = Command::new("git");
                c.args(&args).current_dir(cwd).envs(env.iter().map(|(k, v)| (k, v)));
                Sandboxed::plain(c)
            }
            Confine::Sandbox { sandbox, namespace, remote, work } => {
                let mut pinned = vec![
                    "-c".to_string(),
                    "protocol.allow=never".into(),
                    "-c".into(),
                    "protocol.https.allow=always".into(),
                    "-c".into(),
                    "protocol.http.allow=always".into(),
                    "-c".into(),
                    "http.followRedirects=false".into(),
                ];
                if let Some(pin) = &remote.pin {
                    pinned.extend(["-c".into(), format!("http.curloptResolve={pin}")]);
                }
                pinned.extend(args);
                let mut env = env.clone();
                env.push(("GIT_CONFIG_NOSYSTEM".into(), "1".into()));
                let jail = Jail {
                    namespace: namespace.to_string(),
                    writable: vec![work.to_path_buf()],
                    cwd: cwd.to_path_buf(),
                    env,
                    ..Jail::default()
                };
                sandbox.command(&jail, "git", &pinned)?
            }
        };
        c.command_mut().kill_on_drop(true);
        Ok::<_, std::io::Error>(c)
    };
    let run = |c: std::io::Result<Sandboxed>| async move {
        match c {
            Ok(c) => c.output().await,
            Err(e) => Err(e),
        }
    };
    let out = |o: std::io::Result<std::process::Output>, what: &str| -> Result<String, Status> {
        let o = o.map_err(|e| Status::unavailable(ID, format!("running git (is it installed?): {e}")))?;
        if o.status.success() {
            Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
        } else {
            let err = String::from_utf8_lossy(&o.stderr);
            Err(Status::bad_request(ID, format!("{what}: {}", err.trim())))
        }
    };
    let dest_s = dest.to_string_lossy().to_string();
    let parent = dest.parent().unwrap_or(Path::new("/"));
    out(run(git(&["clone", "--quiet", "--no-checkout", url, &dest_s], parent)).await, &format!("cloning {url}"))?;
    let target = reference.unwrap_or("HEAD");
    out(
        run(git(&["-c", "advice.detachedHead=false", "checkout", "--quiet", target], dest)).await,
        &format!("checking out {target} of {url}"),
    )?;
    let commit = out(run(git(&["rev-parse", "HEAD"], dest)).await, "reading the commit")?;
    let _ = std::fs::remove_dir_all(dest.join(".git"));
    if commit.len() < 12 || !commit.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Status::bad_request(ID, format!("git gave {commit:?} as the commit of {url}")));
    }
    Ok(commit)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn git(url: &str, reference: Option<&str>, path: &str) -> Source {
        Source::Git { url: url.into(), reference: reference.map(String::from), path: path.into(), configured: false }
    }

    fn configured(s: Source) -> Source {
        match s {
            Source::Git { url, reference, path, .. } => Source::Git { url, reference, path, configured: true },
            other => other,
        }
    }

    #[test]
    fn sources() {
        let id = "a".repeat(64);
        assert_eq!(parse("./x", &id, None).unwrap(), Source::Upload(id));
        assert!(parse("./x", "nope", None).is_err());
        assert_eq!(parse("file:///srv/repo.git@v1", "", None).unwrap(), git("file:///srv/repo.git", Some("v1"), ""));
        assert_eq!(
            parse("file:///srv/repo.git//svc/foo@main", "", None).unwrap(),
            git("file:///srv/repo.git", Some("main"), "svc/foo")
        );
        assert_eq!(parse("/srv/repo.git", "", None).unwrap(), git("/srv/repo.git", None, ""));
        assert_eq!(
            parse("github.com/micro/services/helloworld@v2", "", None).unwrap(),
            git("https://github.com/micro/services", Some("v2"), "helloworld")
        );
        assert_eq!(
            parse("git@github.com:org/repo.git", "", None).unwrap(),
            git("git@github.com:org/repo.git", None, "")
        );
        assert_eq!(
            parse("helloworld", "", Some("github.com/micro/services")).unwrap(),
            configured(git("https://github.com/micro/services", None, "helloworld"))
        );
        assert_eq!(
            parse("hello@v1", "", Some("file:///srv/services.git")).unwrap(),
            configured(git("file:///srv/services.git", Some("v1"), "hello"))
        );
        assert!(parse("helloworld", "", None).unwrap_err().detail().contains("MICRO_RUNTIME_REPO"));
        assert!(parse("", "", None).is_err());
        assert!(parse("github.com/org", "", None).is_err());
    }

    #[test]
    fn hosts() {
        assert_eq!(http_host("https://github.com/org/repo"), Some("github.com"));
        assert_eq!(http_host("http://u@127.0.0.1:8000/a.git"), Some("127.0.0.1"));
        assert_eq!(http_host("file:///srv/a.git"), None);
    }

    #[test]
    fn entries() {
        assert_eq!(check_entry("examples/hello").unwrap(), PathBuf::from("examples/hello"));
        assert_eq!(check_entry("").unwrap(), PathBuf::from(""));
        assert!(check_entry("../etc").is_err());
        assert!(check_entry("a/../../b").is_err());
    }
}
