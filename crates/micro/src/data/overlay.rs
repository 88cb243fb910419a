//! Local config layers: a file and `MICRO_CONFIG_*` environment variables over the
//! server's config.

use micro_core::Status;
use serde_json::Value;

/// The environment prefix of config overrides: `MICRO_CONFIG_APP__DB__URL` sets
/// `app.db.url` (segments joined by `__`, lowercased).
pub const CONFIG_ENV_PREFIX: &str = "MICRO_CONFIG_";

/// Deep-merges `top` over `base`: objects merge key by key, anything else replaces.
pub fn merge(base: Value, top: Value) -> Value {
    match (base, top) {
        (Value::Object(mut b), Value::Object(t)) => {
            for (k, v) in t {
                let merged = match b.remove(&k) {
                    Some(old) => merge(old, v),
                    None => v,
                };
                b.insert(k, merged);
            }
            Value::Object(b)
        }
        (_, top) => top,
    }
}

pub(super) fn at<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    if path.is_empty() {
        return (!v.is_null()).then_some(v);
    }
    path.split('.').try_fold(v, |v, seg| v.get(seg))
}

fn set_at(root: &mut Value, segs: &[&str], value: Value) {
    let mut cur = root;
    for seg in segs {
        if !cur.is_object() {
            *cur = Value::Object(Default::default());
        }
        let Value::Object(map) = cur else { return };
        cur = map.entry(seg.to_string()).or_insert(Value::Null);
    }
    *cur = value;
}

/// The local layers: the file at `file` (JSON, or TOML by its `.toml` extension) with
/// the `MICRO_CONFIG_*` variables of `vars` over it.
pub fn overlay(file: Option<&std::path::Path>, vars: impl Iterator<Item = (String, String)>) -> Result<Value, Status> {
    let mut layer = match file {
        None => Value::Null,
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| Status::bad_request("config", format!("reading {}: {e}", path.display())))?;
            let parsed: Result<Value, String> = if path.extension().is_some_and(|x| x == "toml") {
                toml::from_str::<toml::Value>(&text)
                    .map_err(|e| e.to_string())
                    .and_then(|t| serde_json::to_value(t).map_err(|e| e.to_string()))
            } else {
                serde_json::from_str(&text).map_err(|e| e.to_string())
            };
            let v = parsed.map_err(|e| Status::bad_request("config", format!("{}: {e}", path.display())))?;
            if !v.is_object() {
                return Err(Status::bad_request(
                    "config",
                    format!("{}: the top level must be an object", path.display()),
                ));
            }
            v
        }
    };
    for (k, v) in vars {
        let Some(rest) = k.strip_prefix(CONFIG_ENV_PREFIX) else { continue };
        if rest == "FILE" || rest.is_empty() {
            continue;
        }
        let lower = rest.to_ascii_lowercase();
        let segs: Vec<&str> = lower.split("__").collect();
        if segs.iter().any(|s| s.is_empty()) {
            continue;
        }
        let value = serde_json::from_str(&v).unwrap_or(Value::String(v));
        set_at(&mut layer, &segs, value);
    }
    Ok(layer)
}
