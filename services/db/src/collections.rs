//! A collection's spec: its optional schema (fields checked on every write) and its
//! rules (who may list, view, create, update and delete which records).
//!
//! A rule is `null` (locked: only the namespace's own managers, its admins and accounts
//! with the `data` or `developer` scope), `""` (anyone, even without an account) or a
//! filter over the record and the caller (`owner = @request.auth.id`). Every rule
//! starts locked.

use crate::filter::{self, Expr};
use crate::records::DbError;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};

/// The most fields a schema declares.
pub const MAX_FIELDS: usize = 200;
/// The deepest a document's JSON nests.
pub const MAX_NESTING: usize = 32;

/// A field's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FieldType {
    /// A string.
    Text,
    /// A number.
    Number,
    /// `true` or `false`.
    Bool,
    /// A time, as text `YYYY-MM-DD[ HH:MM:SS[.mmm]][Z]`.
    Date,
    /// A list.
    Array,
    /// An object.
    Object,
    /// Anything.
    Json,
    /// The id of a record of another collection (`collection`).
    Relation,
}

/// A field of a schema.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Field {
    /// Its name: letters, digits and `_`, not one of the record's own (`id`, `created`,
    /// `updated`, `version`).
    pub name: String,
    /// Its type.
    #[serde(rename = "type")]
    pub kind: Option<FieldType>,
    /// Every record has it (not null, and not "" for text).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub required: bool,
    /// No two records share a value of it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unique: bool,
    /// The least number, or the shortest text or list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// The greatest number, or the longest text or list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// The only values it may take.
    #[serde(default, rename = "enum", skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<Json>,
    /// For a relation: the collection its ids are of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collection: Option<String>,
}

/// Who may do what with a collection's records: each rule `null` (locked), `""` (anyone)
/// or a filter.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Rules {
    /// Which records a list shows.
    #[serde(default)]
    pub list: Option<String>,
    /// Which records may be read one by one (and are delivered in realtime).
    #[serde(default)]
    pub view: Option<String>,
    /// Which new records may be made.
    #[serde(default)]
    pub create: Option<String>,
    /// Which records may be changed (tested before and after the change).
    #[serde(default)]
    pub update: Option<String>,
    /// Which records may be deleted.
    #[serde(default)]
    pub delete: Option<String>,
}

/// A rule as it applies to one caller.
#[derive(Clone, Debug, PartialEq)]
pub enum Rule {
    /// Only the namespace's managers.
    Locked,
    /// Anyone.
    Public,
    /// The records that hold the filter.
    Filter(Expr),
}

impl Rule {
    /// The rule from its text.
    pub fn parse(what: &str, text: &Option<String>) -> Result<Rule, DbError> {
        match text.as_deref() {
            None => Ok(Rule::Locked),
            Some(f) if f.trim().is_empty() => Ok(Rule::Public),
            Some(f) => {
                filter::parse(f).map(Rule::Filter).map_err(|e| DbError::Invalid(format!("the {what} rule: {e}")))
            }
        }
    }

    /// The rule in words, for a person reading it (`what` the operation: "list records").
    pub fn explain(what: &str, text: &Option<String>) -> String {
        match text.as_deref().map(str::trim) {
            None => format!("Only the namespace's admins and developers may {what}."),
            Some("") => format!("Anyone may {what}, even without an account."),
            Some(f) => format!("Allowed where {f} (of each record, with the caller as @request.auth)."),
        }
    }
}

/// A collection's spec, as its owner saves it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// The fields every record is checked against; none (`null`): any JSON object.
    #[serde(default)]
    pub schema: Option<Vec<Field>>,
    /// Who may do what; every rule locked unless given.
    #[serde(default)]
    pub rules: Rules,
    /// Indexes the queries of the collection use (a unique field of the schema has one
    /// without being named here).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub indexes: Vec<Index>,
    /// The fields full-text search covers (text, numbers and lists of them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
}

/// An index: fields (in order) whose values lists find records by and sort on.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Index {
    /// The fields (`a.b` for a nested one; `created` and the other own fields too).
    pub fields: Vec<String>,
    /// No two records share these fields' values.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unique: bool,
}

fn bad(msg: impl Into<String>) -> DbError {
    DbError::Invalid(msg.into())
}

fn field_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !["id", "created", "updated", "version"].contains(&name)
}

impl Spec {
    /// Checks the spec itself: field names and types, limits that make sense, rules that
    /// parse.
    pub fn check(&self) -> Result<(), DbError> {
        if let Some(fields) = &self.schema {
            if fields.len() > MAX_FIELDS {
                return Err(bad(format!("a schema of at most {MAX_FIELDS} fields")));
            }
            let mut seen = std::collections::BTreeSet::new();
            for f in fields {
                if !field_name_ok(&f.name) {
                    return Err(bad(format!(
                        "field {:?}: letters, digits and _, not starting with a digit, at most 64, \
                         not id, created, updated or version",
                        f.name
                    )));
                }
                if !seen.insert(f.name.as_str()) {
                    return Err(bad(format!("field {} is declared twice", f.name)));
                }
                let Some(kind) = f.kind else {
                    return Err(bad(format!(
                        "field {} has no type: text, number, bool, date, array, object, json or relation",
                        f.name
                    )));
                };
                if let (Some(min), Some(max)) = (f.min, f.max)
                    && min > max
                {
                    return Err(bad(format!("field {}: min {min} is above max {max}", f.name)));
                }
                match (kind, &f.collection) {
                    (FieldType::Relation, None) => {
                        return Err(bad(format!("field {} is a relation: name its collection", f.name)));
                    }
                    (FieldType::Relation, Some(c)) if !field_name_ok(c) => {
                        return Err(bad(format!("field {}: {c:?} is not a collection name", f.name)));
                    }
                    (FieldType::Relation, _) => {}
                    (_, Some(_)) => return Err(bad(format!("field {}: only a relation names a collection", f.name))),
                    _ => {}
                }
                if f.unique && matches!(kind, FieldType::Array | FieldType::Object | FieldType::Json) {
                    return Err(bad(format!("field {}: only text, numbers, dates and relations are unique", f.name)));
                }
            }
        }
        for (what, text) in self.rule_texts() {
            Rule::parse(what, text)?;
        }
        Ok(())
    }

    /// Each rule's name and text.
    pub fn rule_texts(&self) -> [(&'static str, &Option<String>); 5] {
        let r = &self.rules;
        [("list", &r.list), ("view", &r.view), ("create", &r.create), ("update", &r.update), ("delete", &r.delete)]
    }

    /// Every index the collection has: those declared, and one for each unique field.
    pub fn index_specs(&self) -> Vec<crate::records::IndexSpec> {
        let mut out: Vec<crate::records::IndexSpec> = self
            .indexes
            .iter()
            .map(|i| crate::records::IndexSpec { fields: i.fields.clone(), unique: i.unique })
            .collect();
        for f in self.unique() {
            let spec = crate::records::IndexSpec { fields: vec![f], unique: true };
            if !out.contains(&spec) {
                out.push(spec);
            }
        }
        out
    }

    /// The fields no two records may share.
    pub fn unique(&self) -> Vec<String> {
        self.schema.iter().flatten().filter(|f| f.unique).map(|f| f.name.clone()).collect()
    }

    /// Checks a document against the schema (any object without one).
    pub fn validate(&self, doc: &Map<String, Json>) -> Result<(), DbError> {
        for v in doc.values() {
            if depth(v) > MAX_NESTING {
                return Err(bad(format!("the record nests deeper than {MAX_NESTING} levels")));
            }
        }
        let Some(fields) = &self.schema else { return Ok(()) };
        for k in doc.keys() {
            if !fields.iter().any(|f| &f.name == k) {
                let names: Vec<&str> = fields.iter().map(|f| f.name.as_str()).collect();
                return Err(bad(format!("unknown field {k}: the schema has {}", names.join(", "))));
            }
        }
        for f in fields {
            let v = doc.get(&f.name).filter(|v| !v.is_null());
            let Some(v) = v else {
                if f.required {
                    return Err(bad(format!("field {} is required", f.name)));
                }
                continue;
            };
            check_value(f, v)?;
        }
        Ok(())
    }
}

fn depth(v: &Json) -> usize {
    match v {
        Json::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        Json::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

fn is_date(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| r.clone().all(|i| b.get(i).is_some_and(u8::is_ascii_digit));
    if !(b.len() >= 10 && digits(0..4) && b[4] == b'-' && digits(5..7) && b[7] == b'-' && digits(8..10)) {
        return false;
    }
    let rest = s[10..].trim_end_matches('Z');
    rest.is_empty()
        || (rest.len() >= 9
            && matches!(rest.as_bytes()[0], b' ' | b'T')
            && rest[1..].chars().all(|c| c.is_ascii_digit() || c == ':' || c == '.'))
}

fn check_value(f: &Field, v: &Json) -> Result<(), DbError> {
    let name = &f.name;
    let kind = f.kind.unwrap_or(FieldType::Json);
    let ok = match kind {
        FieldType::Text => v.is_string(),
        FieldType::Number => v.is_number(),
        FieldType::Bool => v.is_boolean(),
        FieldType::Date => v.as_str().is_some_and(is_date),
        FieldType::Array => v.is_array(),
        FieldType::Object => v.is_object(),
        FieldType::Json => true,
        FieldType::Relation => v.as_str().is_some_and(|s| !s.is_empty() && s.len() <= 64),
    };
    if !ok {
        let want = match kind {
            FieldType::Text => "text",
            FieldType::Number => "a number",
            FieldType::Bool => "true or false",
            FieldType::Date => "a date like 2026-12-06 10:00:00Z",
            FieldType::Array => "a list",
            FieldType::Object => "an object",
            FieldType::Json => "JSON",
            FieldType::Relation => "a record's id",
        };
        return Err(bad(format!("field {name} must be {want}, not {v}")));
    }
    if f.required && v.as_str() == Some("") {
        return Err(bad(format!("field {name} is required")));
    }
    let size = match v {
        Json::Number(n) => n.as_f64(),
        Json::String(s) => Some(s.chars().count() as f64),
        Json::Array(a) => Some(a.len() as f64),
        _ => None,
    };
    if let Some(size) = size {
        let unit = if v.is_number() {
            ""
        } else if v.is_string() {
            " characters"
        } else {
            " items"
        };
        if let Some(min) = f.min.filter(|m| size < *m) {
            return Err(bad(format!("field {name} must be at least {min}{unit}")));
        }
        if let Some(max) = f.max.filter(|m| size > *m) {
            return Err(bad(format!("field {name} must be at most {max}{unit}")));
        }
    }
    if !f.values.is_empty() && !f.values.contains(v) {
        let values: Vec<String> = f.values.iter().map(Json::to_string).collect();
        return Err(bad(format!("field {name} must be one of {}", values.join(", "))));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(v: Json) -> Spec {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn schemas_check_documents() {
        let s = spec(json!({"schema": [
            {"name": "title", "type": "text", "required": true, "max": 5},
            {"name": "prio", "type": "number", "min": 1, "max": 3},
            {"name": "state", "type": "text", "enum": ["open", "done"]},
            {"name": "due", "type": "date"},
            {"name": "tags", "type": "array", "max": 2},
        ]}));
        s.check().unwrap();
        let doc = |v: Json| v.as_object().unwrap().clone();
        s.validate(&doc(json!({"title": "milk", "prio": 2, "state": "open", "due": "2026-12-06 10:00:00Z"}))).unwrap();
        for (bad_doc, why) in [
            (json!({"prio": 2}), "title is required"),
            (json!({"title": ""}), "title is required"),
            (json!({"title": "toolong"}), "at most 5 characters"),
            (json!({"title": 5}), "must be text"),
            (json!({"title": "a", "prio": 4}), "at most 3"),
            (json!({"title": "a", "state": "lost"}), "one of \"open\", \"done\""),
            (json!({"title": "a", "due": "tomorrow"}), "a date"),
            (json!({"title": "a", "tags": [1, 2, 3]}), "at most 2 items"),
            (json!({"title": "a", "other": 1}), "unknown field other"),
        ] {
            let e = s.validate(&doc(bad_doc.clone())).unwrap_err().to_string();
            assert!(e.contains(why), "{bad_doc}: {e}");
        }
        // Schemaless: any object, but not nested without end.
        let free = Spec::default();
        free.validate(&doc(json!({"anything": [1, {"a": null}]}))).unwrap();
        let mut deep = json!(1);
        for _ in 0..40 {
            deep = json!([deep]);
        }
        assert!(free.validate(&doc(json!({"d": deep}))).unwrap_err().to_string().contains("nests deeper"));
    }

    #[test]
    fn specs_are_checked() {
        for (bad_spec, why) in [
            (json!({"schema": [{"name": "id", "type": "text"}]}), "not id"),
            (json!({"schema": [{"name": "a", "type": "text"}, {"name": "a", "type": "text"}]}), "twice"),
            (json!({"schema": [{"name": "a"}]}), "has no type"),
            (json!({"schema": [{"name": "a", "type": "number", "min": 3, "max": 1}]}), "above max"),
            (json!({"schema": [{"name": "a", "type": "relation"}]}), "name its collection"),
            (json!({"rules": {"list": "owner = "}}), "the list rule: at 8"),
        ] {
            let e = spec(bad_spec.clone()).check().unwrap_err().to_string();
            assert!(e.contains(why), "{bad_spec}: {e}");
        }
        assert!(serde_json::from_value::<Spec>(json!({"rules": {"lsit": ""}})).is_err(), "unknown rule names");
        assert_eq!(Rule::parse("list", &None).unwrap(), Rule::Locked);
        assert_eq!(Rule::parse("list", &Some(" ".into())).unwrap(), Rule::Public);
        assert!(Rule::explain("view", &Some("owner = @request.auth.id".into())).contains("where owner"));
    }
}
