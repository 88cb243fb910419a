//! A parsed filter as SQLite's `WHERE` clause over a collection's records: every value
//! (strings, numbers, field paths, the caller's id) is a parameter, never text of the
//! query, so no filter can change what the query does.
//!
//! Records are rows of `(id, data, created, updated, version)`, `data` the document as
//! JSON text. `id`, `created`, `updated` and `version` are the columns; any other field is
//! `json_extract(data, <path>)`.

use crate::filter::{Cmp, Expr, Op, Operand};
use std::collections::BTreeMap;

/// A parameter of a query.
#[derive(Debug, Clone, PartialEq)]
pub enum Param {
    /// SQL `NULL`.
    Null,
    /// An integer (and booleans: 1 and 0, as `json_extract` gives them).
    Int(i64),
    /// A floating-point number.
    Real(f64),
    /// Text.
    Text(String),
}

/// What a filter's macros stand for in one request.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// `@request.auth.<field>`: the caller's fields (none for an anonymous caller, whose
    /// fields are all `""`).
    pub auth: BTreeMap<String, Param>,
    /// `@now`, written as the records' times are (`YYYY-MM-DD HH:MM:SS.mmmZ`, UTC), so
    /// they compare as text.
    pub now: String,
    /// `@todayStart` and `@todayEnd`, written the same way.
    pub today: (String, String),
}

/// A `WHERE` clause and its parameters (`?1`, `?2`, … in order).
#[derive(Debug, Clone, PartialEq)]
pub struct Clause {
    /// The SQL text.
    pub sql: String,
    /// Its parameters.
    pub params: Vec<Param>,
}

/// The columns of a record; every other field is in `data`.
const COLUMNS: [&str; 4] = ["id", "created", "updated", "version"];

struct Builder<'a> {
    params: Vec<Param>,
    request: &'a Request,
}

impl Builder<'_> {
    fn param(&mut self, p: Param) -> String {
        self.params.push(p);
        format!("?{}", self.params.len())
    }

    /// A field's JSON path as SQL text (`'$."a"."b"'`): written into the query, not a
    /// parameter, so that an index on the same expression is used. Only names are
    /// written (letters, digits and `_`, as the parser reads them); anything else in a
    /// segment is dropped.
    fn path_literal(path: &[String]) -> String {
        let clean: Vec<String> =
            path.iter().map(|s| s.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_').collect()).collect();
        format!("'{}'", json_path(&clean))
    }

    fn operand(&mut self, o: &Operand) -> String {
        match o {
            // (Qualified: inside a `?` form's json_each, `id` would be its column.)
            Operand::Field(path) if path.len() == 1 && COLUMNS.contains(&path[0].as_str()) => {
                format!("records.{}", path[0])
            }
            Operand::Field(path) => {
                let p = Self::path_literal(path);
                format!("json_extract(records.data, {p})")
            }
            Operand::Str(s) => self.param(Param::Text(s.clone())),
            Operand::Num(n) if n.fract() == 0.0 && n.abs() < 9.0e15 => self.param(Param::Int(*n as i64)),
            Operand::Num(n) => self.param(Param::Real(*n)),
            Operand::Bool(b) => self.param(Param::Int(i64::from(*b))),
            Operand::Null => "NULL".into(),
            Operand::Macro(path) => {
                let value = match path.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
                    ["now"] => Param::Text(self.request.now.clone()),
                    ["todayStart"] => Param::Text(self.request.today.0.clone()),
                    ["todayEnd"] => Param::Text(self.request.today.1.clone()),
                    // An anonymous caller's fields (and unknown ones) are "", as in PocketBase:
                    // `owner = @request.auth.id` matches no record without an owner, and
                    // `@request.auth.id != ""` tells a signed-in caller.
                    ["request", "auth", field] => match self.request.auth.get(*field) {
                        Some(Param::Null) | None => Param::Text(String::new()),
                        Some(v) => v.clone(),
                    },
                    _ => Param::Text(String::new()),
                };
                self.param(value)
            }
        }
    }

    /// `value LIKE '%…%'`'s pattern for a contains test: `%` and `_` of the value are
    /// literal, whether the value is written in the filter or is a field's or a macro's.
    fn contains(&mut self, o: &Operand) -> String {
        let text = match o {
            Operand::Str(s) => s.clone(),
            Operand::Num(n) => n.to_string(),
            Operand::Bool(b) => b.to_string(),
            _ => {
                let v = self.operand(o);
                return format!("('%' || replace(replace(replace({v}, '\\', '\\\\'), '%', '\\%'), '_', '\\_') || '%')");
            }
        };
        let escaped = text.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
        self.param(Param::Text(format!("%{escaped}%")))
    }

    fn cmp(&mut self, c: &Cmp) -> String {
        if c.any {
            // Any item of the left array: each item is `value` of json_each.
            let Operand::Field(path) = &c.left else {
                return self.cmp(&Cmp { any: false, ..c.clone() });
            };
            // Arrays only: json_each would walk an object's or a scalar's too.
            let p = Self::path_literal(path);
            let test = self.test("value", None, c.op, &c.right);
            return format!(
                "EXISTS (SELECT 1 FROM json_each(records.data, {p}) WHERE json_type(records.data, {p}) = 'array' AND {test})"
            );
        }
        let kind = match &c.left {
            Operand::Field(path) if !(path.len() == 1 && COLUMNS.contains(&path[0].as_str())) => {
                Some(format!("json_type(records.data, {})", Self::path_literal(path)))
            }
            _ => None,
        };
        let left = self.operand(&c.left);
        self.test(&left, kind.as_deref(), c.op, &c.right)
    }

    /// `left op right`, null-safe for `=` and `!=`; an ordered comparison with a number
    /// or a string holds only for a field of that JSON type (`kind`: the field's
    /// `json_type`, or for an array's items json_each's `type`), never across types.
    fn test(&mut self, left: &str, kind: Option<&str>, op: Op, right: &Operand) -> String {
        match op {
            Op::Like => {
                let r = self.contains(right);
                format!("({left} LIKE {r} ESCAPE '\\')")
            }
            Op::NotLike => {
                let r = self.contains(right);
                format!("({left} IS NULL OR {left} NOT LIKE {r} ESCAPE '\\')")
            }
            Op::Eq => {
                let r = self.operand(right);
                format!("({left} IS {r})")
            }
            Op::Ne => {
                let r = self.operand(right);
                format!("({left} IS NOT {r})")
            }
            Op::Gt | Op::Ge | Op::Lt | Op::Le => {
                let kind = kind.unwrap_or(if left == "value" { "type" } else { "" });
                let types = match right {
                    Operand::Num(_) => Some("('integer', 'real')"),
                    Operand::Str(_) => Some("('text')"),
                    _ => None,
                };
                let r = self.operand(right);
                match types.filter(|_| !kind.is_empty()) {
                    Some(types) => format!("({kind} IN {types} AND {left} {} {r})", op.as_str()),
                    None => format!("({left} {} {r})", op.as_str()),
                }
            }
        }
    }

    fn expr(&mut self, e: &Expr) -> String {
        match e {
            Expr::Cmp(c) => self.cmp(c),
            // No terms: true for all of none, false for any of none.
            Expr::And(items) if items.is_empty() => "1".into(),
            Expr::Or(items) if items.is_empty() => "0".into(),
            Expr::And(items) => {
                let parts: Vec<String> = items.iter().map(|i| self.expr(i)).collect();
                format!("({})", parts.join(" AND "))
            }
            Expr::Or(items) => {
                let parts: Vec<String> = items.iter().map(|i| self.expr(i)).collect();
                format!("({})", parts.join(" OR "))
            }
        }
    }
}

/// A JSON path for `json_extract`: `$."a"."b"` (segments are names, checked by the
/// parser and the sort; quoted anyway).
pub fn json_path(path: &[String]) -> String {
    let mut p = String::from("$");
    for seg in path {
        p.push_str(&format!(".\"{}\"", seg.replace('"', "")));
    }
    p
}

/// A field's expression over a record (`records.`-qualified): a column of its own, else
/// `json_extract` of its path, written as an index on it is.
pub fn field_expr(path: &[String]) -> String {
    match path {
        [c] if COLUMNS.contains(&c.as_str()) => format!("records.{c}"),
        _ => format!("json_extract(records.data, {})", Builder::path_literal(path)),
    }
}

/// `e` as SQLite's `WHERE` clause for `request`, parameters from `?1` on.
pub fn sqlite(e: &Expr, request: &Request) -> Clause {
    let mut b = Builder { params: Vec::new(), request };
    let sql = b.expr(e);
    Clause { sql, params: b.params }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::parse;
    use rusqlite::types::Value;

    /// A collection of records in memory, queried with filters.
    fn table() -> rusqlite::Connection {
        let db = rusqlite::Connection::open_in_memory().unwrap();
        db.execute_batch(
            "CREATE TABLE records (id TEXT PRIMARY KEY, data TEXT NOT NULL, created TEXT, updated TEXT, version INTEGER);",
        )
        .unwrap();
        let docs = [
            (
                "r1",
                r#"{"title":"Buy milk","done":false,"owner":"ann","total":12.5,"tags":["home","vip","r1"],
                    "meta":{"prio":1},"score":5,"labels":["x"],"pat":"%"}"#,
            ),
            (
                "r2",
                r#"{"title":"100% done_ish","done":true,"owner":"bo","total":100,"tags":["work"],
                    "meta":{"prio":3},"score":"7","labels":"x","pat":"done"}"#,
            ),
            (
                "r3",
                r#"{"title":"It's a 'quote'","done":false,"owner":"ann","total":0,"tags":[],
                    "meta":{"prio":null},"score":{"a":1},"labels":{"k":"x"},"pat":"_"}"#,
            ),
            ("r4", r#"{"title":"no owner","done":false,"total":-3}"#),
        ];
        for (i, (id, data)) in docs.iter().enumerate() {
            let at = format!("2026-12-0{} 10:00:00.000Z", i + 1);
            db.execute("INSERT INTO records VALUES (?1, ?2, ?3, ?3, 1)", (id, data, at)).unwrap();
        }
        db
    }

    fn ids(db: &rusqlite::Connection, filter: &str, request: &Request) -> Vec<String> {
        let clause = sqlite(&parse(filter).unwrap(), request);
        let params: Vec<Value> = clause
            .params
            .iter()
            .map(|p| match p {
                Param::Null => Value::Null,
                Param::Int(i) => Value::Integer(*i),
                Param::Real(r) => Value::Real(*r),
                Param::Text(t) => Value::Text(t.clone()),
            })
            .collect();
        let sql = format!("SELECT id FROM records WHERE {} ORDER BY id", clause.sql);
        let mut stmt = db.prepare(&sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        stmt.query_map(rusqlite::params_from_iter(params), |r| r.get(0)).unwrap().map(Result::unwrap).collect()
    }

    #[test]
    fn filters_select_the_records_they_say() {
        let db = table();
        let ann = Request {
            auth: [("id".to_string(), Param::Text("ann".into()))].into(),
            now: "2026-12-03 00:00:00.000Z".into(),
            ..Default::default()
        };
        let anon = Request::default();
        let null_auth = Request { auth: [("id".to_string(), Param::Null)].into(), ..Default::default() };
        for (filter, who, want) in [
            ("done = false", &anon, vec!["r1", "r3", "r4"]),
            ("done = true && total >= 100", &anon, vec!["r2"]),
            ("total > 0 && total < 100", &anon, vec!["r1"]),
            ("total != 0", &anon, vec!["r1", "r2", "r4"]),
            ("owner = null", &anon, vec!["r4"]),
            ("owner != null", &anon, vec!["r1", "r2", "r3"]),
            ("meta.prio >= 2 || meta.prio = null", &anon, vec!["r2", "r3", "r4"]),
            ("title ~ 'MILK'", &anon, vec!["r1"]),
            ("title ~ '100%'", &anon, vec!["r2"]),
            ("title ~ '%'", &anon, vec!["r2"]),
            ("title ~ '_'", &anon, vec!["r2"]),
            ("title !~ 'o'", &anon, vec!["r1"]),
            ("title = \"It's a 'quote'\"", &anon, vec!["r3"]),
            ("tags ?= 'vip'", &anon, vec!["r1"]),
            ("tags ?~ 'or'", &anon, vec!["r2"]),
            ("tags ?!= 'home'", &anon, vec!["r1", "r2"]),
            ("owner = @request.auth.id", &ann, vec!["r1", "r3"]),
            ("owner = @request.auth.id", &anon, vec![]),
            ("@request.auth.id != ''", &anon, vec![]),
            ("@request.auth.id != '' && owner = @request.auth.id", &ann, vec!["r1", "r3"]),
            ("created < @now", &ann, vec!["r1", "r2"]),
            ("id = 'r4' || (owner = 'bo' && done = true)", &anon, vec!["r2", "r4"]),
            ("version = 1 && updated = created", &anon, vec!["r1", "r2", "r3", "r4"]),
            // Ordered comparisons hold within a JSON type only.
            ("score > 0", &anon, vec!["r1"]),
            ("score > ''", &anon, vec!["r2"]),
            // `?` forms walk arrays only, and `id` there is still the record's.
            ("labels ?= 'x'", &anon, vec!["r1"]),
            ("tags ?= id", &anon, vec!["r1"]),
            // A field's value in `~` is literal text: its % and _ are no wildcards.
            ("title ~ pat", &anon, vec!["r2"]),
            ("owner = @request.auth.id", &null_auth, vec![]),
        ] {
            assert_eq!(ids(&db, filter, who), want, "{filter}");
        }
    }

    /// Every string of `e` replaced by one of quotes, wildcards and backslashes.
    fn blank(e: &mut Expr) {
        match e {
            Expr::And(items) | Expr::Or(items) => items.iter_mut().for_each(blank),
            Expr::Cmp(c) => {
                for o in [&mut c.left, &mut c.right] {
                    if let Operand::Str(s) = o {
                        *s = format!("x{}'\"%_\\ OR 1=1", s.len());
                    }
                }
            }
        }
    }

    #[test]
    fn the_sql_text_depends_on_the_filters_shape_only() {
        for filter in [
            "a = 'x' && (b ~ \"y\" || c ?= 'z') && d !~ 'w' && e > 'v' && f ?~ 'u'",
            "title = \"' OR 1=1 --\" || owner = @request.auth.id",
            "x.y.z <= 'q' && id = 'r1' && tags ?!= 'p'",
        ] {
            let e = parse(filter).unwrap();
            let mut other = e.clone();
            blank(&mut other);
            let (a, b) = (sqlite(&e, &Request::default()), sqlite(&other, &Request::default()));
            assert_eq!(a.sql, b.sql, "{filter}");
            assert_ne!(a.params, b.params, "{filter}");
        }
    }

    #[test]
    fn values_are_parameters_never_text() {
        let db = table();
        for (filter, want) in [
            (r#"owner = "' OR 1=1 --""#, vec![]),
            (r#"owner = '"); DROP TABLE records; --'"#, vec![]),
            ("title ~ \"') OR 1=1 --\"", vec![]),
        ] {
            let clause = sqlite(&parse(filter).unwrap(), &Request::default());
            assert!(!clause.sql.contains("OR 1=1") && !clause.sql.contains("DROP"), "{}", clause.sql);
            assert_eq!(ids(&db, filter, &Request::default()), want as Vec<&str>, "{filter}");
        }
        let count: i64 = db.query_row("SELECT count(*) FROM records", [], |r| r.get(0)).unwrap();
        assert_eq!(count, 4, "the table is still there, whole");
    }
}
