//! `micro new <name>`: scaffolds a service that builds, runs and whose test passes.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

const FILES: [(&str, &str); 6] = [
    ("Cargo.toml", include_str!("../templates/new/Cargo.toml.tmpl")),
    ("src/lib.rs", include_str!("../templates/new/lib.rs.tmpl")),
    ("src/main.rs", include_str!("../templates/new/main.rs.tmpl")),
    ("tests/service.rs", include_str!("../templates/new/test.rs.tmpl")),
    ("README.md", include_str!("../templates/new/README.md.tmpl")),
    (".gitignore", include_str!("../templates/new/gitignore.tmpl")),
];

/// Checks a new service's name: lowercase letters, digits and `-`, starting with a letter.
pub(crate) fn validate(name: &str) -> Result<()> {
    let ok = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !ok {
        bail!("invalid service name {name:?}: use lowercase letters, digits and '-', starting with a letter");
    }
    Ok(())
}

/// The `micro` dependency line: a path to a local checkout when there is one (the
/// framework is not on the registry yet), else the registry version.
fn micro_dependency(path: Option<&Path>) -> Result<String> {
    let local = match path {
        Some(p) => {
            let p = p.canonicalize().with_context(|| format!("--micro-path {}", p.display()))?;
            if !p.join("Cargo.toml").exists() {
                bail!("--micro-path {}: no Cargo.toml there (point it at crates/micro)", p.display());
            }
            Some(p)
        }
        None => Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../micro")).canonicalize().ok(),
    };
    Ok(match local {
        Some(p) => format!("micro = {{ path = {:?} }}", p.display().to_string()),
        None => format!("micro = \"{}\"", env!("CARGO_PKG_VERSION")),
    })
}

/// Writes the project for service `name` into `dir` (default `./<name>`); returns it.
pub(crate) fn generate(name: &str, dir: Option<PathBuf>, micro_path: Option<&Path>) -> Result<PathBuf> {
    validate(name)?;
    let dir = dir.unwrap_or_else(|| PathBuf::from(name));
    if dir.exists() && dir.read_dir().map(|mut d| d.next().is_some()).unwrap_or(true) {
        bail!("{} already exists and is not empty", dir.display());
    }
    let micro = micro_dependency(micro_path)?;
    let crate_name = name.replace('-', "_");
    let handler = micro_server::gateway::camel(name);
    for (path, template) in FILES {
        let text = template
            .replace("{{micro}}", &micro)
            .replace("{{name}}", name)
            .replace("{{crate}}", &crate_name)
            .replace("{{Handler}}", &handler);
        let target = dir.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&target, text).with_context(|| format!("writing {}", target.display()))?;
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["foo", "foo-bar", "a1"] {
            assert!(validate(good).is_ok(), "{good}");
        }
        for bad in ["", "Foo", "1foo", "foo_bar", "foo-", "foo.bar", "../x", "föö"] {
            assert!(validate(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn generates_every_file_with_names_filled_in() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = generate("foo-bar", Some(tmp.path().join("svc")), None).unwrap();
        let lib = std::fs::read_to_string(dir.join("src/lib.rs")).unwrap();
        assert!(lib.contains(r#"Service::new("foo-bar")"#) && lib.contains(r#""FooBar.Call""#), "{lib}");
        let main = std::fs::read_to_string(dir.join("src/main.rs")).unwrap();
        assert!(main.contains("foo_bar::service()"), "{main}");
        for (path, _) in FILES {
            let text = std::fs::read_to_string(dir.join(path)).unwrap();
            assert!(!text.contains("{{"), "{path} has an unfilled placeholder");
        }
        // Never overwrites.
        assert!(generate("foo-bar", Some(dir), None).is_err());
    }
}
