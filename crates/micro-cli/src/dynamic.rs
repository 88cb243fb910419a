//! Dynamic commands: `micro helloworld greeter hello --name=Alice` resolved against the
//! registry, with flags from the endpoint's request schema; and `micro service`.

use crate::cli::{Ctx, print_reply, status_err};
use anyhow::{Result, anyhow, bail};
use micro::CallOptions;
use micro::registry::{Endpoint, Node, Service};
use serde_json::{Map, Value};
use std::time::Duration;

/// A flag: its name (`page_size`), path in the request (`["page","size"]`) and schema.
struct Flag {
    name: String,
    path: Vec<String>,
    schema: Value,
}

fn flags(schema: &Value, prefix: &[String], out: &mut Vec<Flag>) {
    let Some(props) = schema.get("properties").and_then(Value::as_object) else { return };
    for (k, v) in props {
        let mut path = prefix.to_vec();
        path.push(k.clone());
        if v.get("type").and_then(Value::as_str) == Some("object")
            && v.get("properties").is_some_and(|p| p.as_object().is_some_and(|o| !o.is_empty()))
        {
            flags(v, &path, out);
        } else {
            out.push(Flag { name: path.join("_"), path, schema: v.clone() });
        }
    }
}

use micro_server::gateway::camel;

fn typed(flag: &Flag, raw: &str) -> Result<Value> {
    // An optional field's type is a list with "null" (`["integer", "null"]`).
    let ty = match flag.schema.get("type") {
        Some(Value::Array(types)) => types.iter().filter_map(Value::as_str).find(|t| *t != "null").unwrap_or("string"),
        Some(t) => t.as_str().unwrap_or("string"),
        None => "string",
    };
    let bad = |what: &str| anyhow!("--{}: {raw:?} is not {what}", flag.name);
    Ok(match ty {
        "integer" => Value::from(raw.parse::<i64>().map_err(|_| bad("an integer"))?),
        "number" => serde_json::Number::from_f64(raw.parse::<f64>().map_err(|_| bad("a number"))?)
            .map(Value::Number)
            .ok_or_else(|| bad("a finite number"))?,
        "boolean" => Value::Bool(match raw {
            "true" | "" => true,
            "false" => false,
            _ => return Err(bad("true or false")),
        }),
        "array" => {
            let items = flag.schema.get("items").cloned().unwrap_or(Value::Null);
            let item = Flag { name: flag.name.clone(), path: vec![], schema: items };
            Value::Array(raw.split(',').map(|p| typed(&item, p)).collect::<Result<_>>()?)
        }
        "object" => {
            serde_json::from_str::<Value>(raw).ok().filter(Value::is_object).ok_or_else(|| bad("a JSON object"))?
        }
        _ => Value::String(raw.to_string()),
    })
}

fn usage(service: &Service) -> String {
    let mut lines =
        vec![format!("Usage: micro {} <handler> <method> [--flags]\n\nEndpoints of {}:", service.name, service.name)];
    for e in &service.endpoints {
        let (h, m) = e.name.split_once('.').unwrap_or((&e.name, ""));
        lines.push(format!("  {:28} micro {} {} {}", e.name, service.name, h.to_lowercase(), m.to_lowercase()));
    }
    lines.join("\n")
}

fn endpoint_usage(service: &str, e: &Endpoint) -> String {
    let mut fl = Vec::new();
    flags(&e.request, &[], &mut fl);
    let mut lines = vec![format!("Usage: micro {service} {} [--flags]\n\nFlags:", e.name)];
    for f in fl {
        lines.push(format!("  --{:24} {}", f.name, f.schema.get("type").and_then(Value::as_str).unwrap_or("any")));
    }
    lines.join("\n")
}

/// Runs a dynamic command.
pub(crate) async fn run(c: &Ctx, args: &[String]) -> Result<()> {
    let name = &args[0];
    let services = match c.registry()?.get_service(&c.namespace, name).await {
        Ok(s) => s,
        Err(e) if e.code() == micro::Code::NotFound => {
            bail!("unknown command or service {name:?}; run `micro --help` or `micro services`")
        }
        Err(e) => return Err(status_err(e)),
    };
    let service = services.into_iter().next().ok_or_else(|| anyhow!("service {name} has no nodes"))?;
    let mut positional = Vec::new();
    let mut raw_flags: Vec<(String, Option<String>)> = Vec::new();
    let mut help = false;
    let mut i = 1;
    while i < args.len() {
        let a = &args[i];
        if a == "--help" || a == "-h" {
            help = true;
        } else if let Some(f) = a.strip_prefix("--") {
            match f.split_once('=') {
                Some((k, v)) => raw_flags.push((k.to_string(), Some(v.to_string()))),
                None => {
                    let next = args.get(i + 1).filter(|n| !n.starts_with("--"));
                    raw_flags.push((f.to_string(), next.cloned()));
                    if next.is_some() {
                        i += 1;
                    }
                }
            }
        } else {
            positional.push(a.clone());
        }
        i += 1;
    }
    let last = camel(service.name.rsplit('.').next().unwrap_or(&service.name));
    let wanted = match positional.as_slice() {
        [] if help => {
            println!("{}", usage(&service));
            return Ok(());
        }
        [] => format!("{last}.Call"),
        [m] => format!("{last}.{}", camel(m)),
        [h, m] => format!("{}.{}", camel(h), camel(m)),
        _ => bail!("too many arguments: {}\n{}", positional.join(" "), usage(&service)),
    };
    let Some(ep) = service.endpoints.iter().find(|e| e.name.eq_ignore_ascii_case(&wanted)) else {
        if help && positional.len() == 1 {
            println!("{}", usage(&service));
            return Ok(());
        }
        bail!("{} has no endpoint {wanted}\n{}", service.name, usage(&service));
    };
    if help {
        println!("{}", endpoint_usage(&service.name, ep));
        return Ok(());
    }
    let mut fl = Vec::new();
    flags(&ep.request, &[], &mut fl);
    let mut req = Map::new();
    for (k, v) in raw_flags {
        let key = k.replace('-', "_");
        let Some(flag) = fl.iter().find(|f| f.name == key) else {
            let valid: Vec<String> = fl.iter().map(|f| format!("--{}", f.name)).collect();
            bail!(
                "unknown flag --{k} for {} {}; valid flags: {}",
                service.name,
                ep.name,
                if valid.is_empty() { "none".into() } else { valid.join(", ") }
            );
        };
        // An optional flag's type is a list with "null" (`["boolean", "null"]`).
        let is_bool = match flag.schema.get("type") {
            Some(Value::Array(types)) => types.iter().any(|t| t == "boolean"),
            t => t.and_then(Value::as_str) == Some("boolean"),
        };
        let raw = match v {
            Some(v) => v,
            None if is_bool => "true".to_string(),
            None => bail!("--{k} needs a value"),
        };
        let value = typed(flag, &raw)?;
        let mut obj = &mut req;
        for p in &flag.path[..flag.path.len() - 1] {
            let e = obj.entry(p.clone()).or_insert_with(|| Value::Object(Map::new()));
            obj = e.as_object_mut().ok_or_else(|| anyhow!("--{k}: conflicting flags"))?;
        }
        obj.insert(flag.path[flag.path.len() - 1].clone(), value);
    }
    let body = serde_json::to_vec(&Value::Object(req))?;
    if ep.stream().is_some() {
        let mut s = c
            .client()
            .stream_json(
                &service.name,
                &ep.name,
                futures::stream::iter([bytes::Bytes::from(body)]),
                &CallOptions::default(),
            )
            .await
            .map_err(status_err)?;
        while let Some(m) = futures::StreamExt::next(&mut s).await {
            print_reply(&m.map_err(status_err)?);
        }
        return Ok(());
    }
    let out = c
        .client()
        .call_raw(
            &service.name,
            &ep.name,
            micro::metadata::CONTENT_TYPE_GRPC_JSON,
            body.into(),
            &CallOptions::default(),
        )
        .await
        .map_err(status_err)?;
    print_reply(&out);
    Ok(())
}

/// `micro service --name foo --endpoint http://127.0.0.1:9090 -- <command>`: registers an
/// HTTP app (served by the gateway at `/foo/...`), runs the command if given, and
/// deregisters when it exits or on Ctrl-C/SIGTERM.
pub(crate) async fn http_service(c: &Ctx, name: &str, endpoint: &str, command: &[String]) -> Result<()> {
    let address = endpoint.trim_start_matches("http://").trim_end_matches('/').to_string();
    if address.is_empty() || endpoint.starts_with("https://") {
        bail!("--endpoint must be an http:// address like http://127.0.0.1:9090");
    }
    let registry = c.registry()?;
    let svc = Service {
        name: name.to_string(),
        version: "latest".into(),
        metadata: Default::default(),
        endpoints: vec![],
        nodes: vec![Node {
            id: format!("{name}-{}", std::process::id()),
            address,
            metadata: [("protocol".to_string(), "http".to_string())].into(),
        }],
    };
    let ttl = Duration::from_secs(15);
    registry.register(&c.namespace, &svc, ttl).await.map_err(status_err)?;
    eprintln!("registered {name} -> {endpoint}");
    let mut child = match command.split_first() {
        Some((prog, args)) => Some(
            tokio::process::Command::new(prog)
                .args(args)
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| anyhow!("cannot run {prog}: {e}"))?,
        ),
        None => None,
    };
    let mut tick = tokio::time::interval(ttl / 3);
    let status = loop {
        tokio::select! {
            _ = tick.tick() => {
                if let Err(e) = registry.register(&c.namespace, &svc, ttl).await {
                    tracing::warn!(error = %e, "re-registering failed");
                }
            }
            _ = micro::server::signal() => break None,
            s = async { match child.as_mut() { Some(ch) => ch.wait().await.ok(), None => std::future::pending().await } } => break s,
        }
    };
    registry.deregister(&c.namespace, &svc).await.map_err(status_err)?;
    eprintln!("deregistered {name}");
    match status {
        Some(s) if !s.success() => bail!("the command exited with {s}"),
        _ => Ok(()),
    }
}
