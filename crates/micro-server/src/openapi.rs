//! OpenAPI 3.1 documents of the gateway, generated from the registry: every endpoint of
//! every service of a namespace (or of one service) as the gateway serves it, with the
//! JSON Schemas the services published. `GET /openapi.json`, `GET /openapi/{service}.json`.

use micro_core::registry::{Endpoint, Service};
use serde_json::{Map, Value, json};

/// `SayHello` → `say-hello` (the gateway turns it back with [`crate::gateway::camel`]).
fn kebab(s: &str) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('-');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// The gateway path of `endpoint` (`Handler.Method`) of `service`.
pub(crate) fn path(service: &str, endpoint: &str) -> Option<String> {
    let (handler, method) = endpoint.split_once('.')?;
    let base = service.replace('.', "/");
    Some(format!("/{base}/{}/{}", kebab(handler), kebab(method)))
}

/// A component name: letters, digits, `.`, `-` and `_` only.
fn component(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).collect()
}

/// Moves `schema`'s `$defs` (and `definitions`) into `components` under `prefix.`, and
/// points its references there: in an OpenAPI document `#/…` means the document's root.
fn hoist(mut schema: Value, prefix: &str, components: &mut Map<String, Value>) -> Value {
    let mut defs = Map::new();
    if let Some(obj) = schema.as_object_mut() {
        for key in ["$defs", "definitions"] {
            if let Some(Value::Object(d)) = obj.remove(key) {
                defs.extend(d);
            }
        }
        obj.remove("$schema");
        obj.remove("$id");
    }
    fn rewrite(v: &mut Value, prefix: &str) {
        match v {
            Value::Object(o) => {
                for (k, x) in o.iter_mut() {
                    if k == "$ref"
                        && let Some(r) = x.as_str()
                    {
                        let name = r.strip_prefix("#/$defs/").or_else(|| r.strip_prefix("#/definitions/"));
                        if let Some(name) = name {
                            *x = Value::String(format!(
                                "#/components/schemas/{}",
                                component(&format!("{prefix}.{name}"))
                            ));
                        }
                    } else {
                        rewrite(x, prefix);
                    }
                }
            }
            Value::Array(a) => a.iter_mut().for_each(|x| rewrite(x, prefix)),
            _ => {}
        }
    }
    rewrite(&mut schema, prefix);
    for (name, mut def) in defs {
        rewrite(&mut def, prefix);
        components.insert(component(&format!("{prefix}.{name}")), def);
    }
    if schema.is_null() { json!({}) } else { schema }
}

fn operation(service: &str, ep: &Endpoint, components: &mut Map<String, Value>) -> Value {
    let prefix = format!("{service}.{}", ep.name);
    let request = hoist(ep.request.clone(), &prefix, components);
    let response = hoist(ep.response.clone(), &prefix, components);
    let mut ok = json!({"description": "The reply.", "content": {"application/json": {"schema": response}}});
    if let Some(kind) = ep.stream() {
        ok = json!({
            "description": format!("A {kind} stream: server-sent events, one JSON reply each (or a WebSocket when asked to upgrade)."),
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        });
    }
    let mut op = json!({
        "operationId": component(&format!("{service}.{}", ep.name)),
        "tags": [service],
        "summary": format!("{service} {}", ep.name),
        "requestBody": {"required": false, "content": {"application/json": {"schema": request}}},
        "responses": {
            "200": ok,
            "default": {"description": "An error.", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
        },
    });
    if let Some(kind) = ep.stream() {
        op["x-micro-stream"] = json!(kind);
    }
    op
}

/// The OpenAPI document of `services` (their endpoints, as the gateway at `server` serves
/// them).
pub(crate) fn document(title: &str, server: Option<&str>, services: &[Service]) -> Value {
    let mut components = Map::new();
    components.insert(
        "Error".into(),
        json!({
            "type": "object",
            "properties": {
                "id": {"type": "string", "description": "The service that answered."},
                "code": {"type": "integer", "description": "The HTTP status."},
                "detail": {"type": "string"},
                "status": {"type": "string"},
            },
        }),
    );
    let mut paths = Map::new();
    let mut seen = std::collections::BTreeSet::new();
    let mut sorted: Vec<&Service> = services.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    for s in sorted {
        for ep in &s.endpoints {
            if !seen.insert((s.name.clone(), ep.name.clone())) {
                continue;
            }
            let Some(p) = path(&s.name, &ep.name) else { continue };
            let op = operation(&s.name, ep, &mut components);
            paths.insert(p, json!({"post": op.clone()}));
            // Declared routes (`http` metadata, like `GET /users/{id}`) too.
            for one in ep.metadata.get("http").map(String::as_str).unwrap_or("").split(';').map(str::trim) {
                let Some((method, route)) = one.split_once(' ') else { continue };
                let method = method.to_ascii_lowercase();
                if !["get", "post", "put", "patch", "delete"].contains(&method.as_str()) || !route.starts_with('/') {
                    continue;
                }
                let mut op = op.clone();
                op["operationId"] = json!(format!("{}.{method}", component(&format!("{}.{}", s.name, ep.name))));
                let params: Vec<Value> = route
                    .split('/')
                    .filter_map(|seg| seg.strip_prefix('{').and_then(|x| x.strip_suffix('}')))
                    .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
                    .collect();
                if !params.is_empty() {
                    op["parameters"] = json!(params);
                }
                if (method == "get" || method == "delete")
                    && let Some(o) = op.as_object_mut()
                {
                    o.remove("requestBody");
                }
                let entry = paths.entry(route.to_string()).or_insert_with(|| json!({}));
                entry[method] = op;
            }
        }
    }
    let mut doc = json!({
        "openapi": "3.1.0",
        "info": {"title": title, "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
        "components": {"schemas": components},
    });
    if let Some(url) = server {
        doc["servers"] = json!([{"url": url}]);
    }
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_round_trip_through_the_gateways_routing() {
        for (service, endpoint) in
            [("helloworld", "Greeter.Hello"), ("notes", "Notes.SayHello"), ("v1.foo", "Foo.GetUser")]
        {
            let p = path(service, endpoint).unwrap();
            assert_eq!(crate::gateway::route(&p), Some((service.to_string(), endpoint.to_string())), "{p}");
        }
    }

    #[test]
    fn definitions_move_to_components_and_references_follow() {
        let mut components = Map::new();
        let schema = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": {"next": {"$ref": "#/$defs/Node"}},
            "$defs": {"Node": {"type": "object", "properties": {"next": {"$ref": "#/$defs/Node"}}}},
        });
        let out = hoist(schema, "list.List.Get", &mut components);
        assert_eq!(out["properties"]["next"]["$ref"], "#/components/schemas/list.List.Get.Node");
        assert!(out.get("$schema").is_none() && out.get("$defs").is_none());
        assert_eq!(
            components["list.List.Get.Node"]["properties"]["next"]["$ref"],
            "#/components/schemas/list.List.Get.Node"
        );
    }
}
