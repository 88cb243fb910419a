//! A parsed filter as PostgreSQL's `WHERE` clause over a collection's records, the
//! counterpart of [`crate::sql`] for the cluster's backend: every value is a parameter
//! (sent as text and cast in the query), never text of the query.
//!
//! Records are rows of `db_records AS records`: `id`, `created`, `updated` (text) and
//! `version` (bigint) are columns; any other field is `nullif(records.data #> '{a,b}',
//! 'null')` (JSONB; a JSON `null` is SQL's `NULL`, as SQLite's `json_extract` gives it),
//! which is also what the collections' indexes are made of.

use crate::filter::{Cmp, Expr, Op, Operand};
use crate::sql::{Param, Request};

/// A `WHERE` clause and its parameters (`$1`, `$2`, … in order, each text or `NULL`).
#[derive(Debug, Clone, PartialEq)]
pub struct Clause {
    /// The SQL text.
    pub sql: String,
    /// Its parameters.
    pub params: Vec<Option<String>>,
}

/// The columns of a record and their types; every other field is in `data`.
fn column(path: &[String]) -> Option<(&'static str, Kind)> {
    match path {
        [c] => match c.as_str() {
            "id" => Some(("records.id", Kind::Text)),
            "created" => Some(("records.created", Kind::Text)),
            "updated" => Some(("records.updated", Kind::Text)),
            "version" => Some(("records.version", Kind::Int)),
            _ => None,
        },
        _ => None,
    }
}

/// A field's path as a PostgreSQL text-array literal (`'{a,b}'`): written into the
/// query so an index on the same expression is used. Only names are written (letters,
/// digits and `_`, as the parser reads them); anything else in a segment is dropped.
fn path_literal(path: &[String]) -> String {
    let clean: Vec<String> =
        path.iter().map(|s| s.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_').collect()).collect();
    format!("'{{{}}}'", clean.join(","))
}

/// A field's expression over a record: its column, else its JSONB value (SQL `NULL`
/// for JSON `null` or none), written as the collections' indexes are.
pub fn field_expr(path: &[String]) -> String {
    match column(path) {
        Some((c, _)) => c.to_string(),
        None => format!("nullif(records.data #> {}, 'null'::jsonb)", path_literal(path)),
    }
}

/// What an operand's SQL is.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    /// JSONB.
    Json,
    /// A text column.
    Text,
    /// A bigint column.
    Int,
}

/// A literal of a filter (or a macro's value).
#[derive(Debug, Clone, PartialEq)]
enum Lit {
    Null,
    Json(serde_json::Value),
}

impl Lit {
    fn text(&self) -> Option<String> {
        match self {
            Lit::Null => None,
            Lit::Json(serde_json::Value::String(s)) => Some(s.clone()),
            Lit::Json(v) => Some(v.to_string()),
        }
    }
}

/// An operand as SQL: an expression of a kind, or a literal (whose SQL follows the
/// other side's kind).
enum Side {
    Expr(String, Kind),
    Lit(Lit),
}

struct Builder<'a> {
    params: Vec<Option<String>>,
    request: &'a Request,
}

impl Builder<'_> {
    fn param(&mut self, p: Option<String>) -> String {
        self.params.push(p);
        format!("${}", self.params.len())
    }

    fn side(&mut self, o: &Operand) -> Side {
        match o {
            Operand::Field(path) => match column(path) {
                Some((c, kind)) => Side::Expr(c.to_string(), kind),
                None => Side::Expr(field_expr(path), Kind::Json),
            },
            Operand::Str(s) => Side::Lit(Lit::Json(serde_json::Value::String(s.clone()))),
            Operand::Num(n) => Side::Lit(Lit::Json(
                serde_json::Number::from_f64(*n).map_or(serde_json::Value::Null, serde_json::Value::Number),
            )),
            Operand::Bool(b) => Side::Lit(Lit::Json(serde_json::Value::Bool(*b))),
            Operand::Null => Side::Lit(Lit::Null),
            Operand::Macro(path) => {
                let text = |s: &str| Side::Lit(Lit::Json(serde_json::Value::String(s.to_string())));
                match path.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
                    ["now"] => text(&self.request.now),
                    ["todayStart"] => text(&self.request.today.0),
                    ["todayEnd"] => text(&self.request.today.1),
                    // An anonymous caller's fields (and unknown ones) are "", as in SQLite's.
                    ["request", "auth", field] => match self.request.auth.get(*field) {
                        Some(Param::Null) | None => text(""),
                        Some(Param::Text(t)) => text(t),
                        Some(Param::Int(i)) => Side::Lit(Lit::Json(serde_json::Value::from(*i))),
                        Some(Param::Real(r)) => Side::Lit(Lit::Json(
                            serde_json::Number::from_f64(*r).map_or(serde_json::Value::Null, serde_json::Value::Number),
                        )),
                    },
                    _ => text(""),
                }
            }
        }
    }

    /// `s` as JSONB.
    fn json(&mut self, s: &Side) -> String {
        match s {
            Side::Expr(e, Kind::Json) => e.clone(),
            Side::Expr(e, _) => format!("to_jsonb({e})"),
            Side::Lit(Lit::Null) => "NULL::jsonb".into(),
            Side::Lit(Lit::Json(v)) => {
                let p = self.param(Some(v.to_string()));
                format!("{p}::text::jsonb")
            }
        }
    }

    /// `s` as text (a string's own text, a number's digits), for contains-tests.
    fn text(&mut self, s: &Side) -> String {
        match s {
            Side::Expr(e, Kind::Json) => format!("({e} #>> '{{}}')"),
            Side::Expr(e, Kind::Text) => e.clone(),
            Side::Expr(e, Kind::Int) => format!("({e})::text"),
            Side::Lit(l) => {
                let p = self.param(l.text());
                format!("{p}::text")
            }
        }
    }

    /// The two sides as SQL of one type: a column with a literal of its type keeps the
    /// column's (so its index serves), anything else compares as JSONB.
    fn pair(&mut self, left: &Side, right: &Side) -> (String, String) {
        match (left, right) {
            (Side::Expr(e, Kind::Text), Side::Lit(Lit::Json(serde_json::Value::String(t))))
            | (Side::Lit(Lit::Json(serde_json::Value::String(t))), Side::Expr(e, Kind::Text)) => {
                let p = self.param(Some(t.clone()));
                let (e, p) = (e.clone(), format!("{p}::text"));
                if matches!(left, Side::Expr(..)) { (e, p) } else { (p, e) }
            }
            (Side::Expr(e, Kind::Int), Side::Lit(Lit::Json(n @ serde_json::Value::Number(_))))
            | (Side::Lit(Lit::Json(n @ serde_json::Value::Number(_))), Side::Expr(e, Kind::Int)) => {
                let p = self.param(Some(n.to_string()));
                let (e, p) = (e.clone(), format!("{p}::text::numeric"));
                if matches!(left, Side::Expr(..)) { (e, p) } else { (p, e) }
            }
            _ => (self.json(left), self.json(right)),
        }
    }

    /// `value ILIKE '%…%'`'s pattern for a contains test: `%`, `_` and `\` of the value
    /// are literal, whether the value is written in the filter or is a field's.
    fn contains(&mut self, right: &Side) -> String {
        match right {
            Side::Lit(l) => {
                let text = l.text().unwrap_or_default();
                let escaped = text.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
                let p = self.param(Some(format!("%{escaped}%")));
                format!("{p}::text")
            }
            side => {
                let v = self.text(side);
                format!("('%' || replace(replace(replace({v}, '\\', '\\\\'), '%', '\\%'), '_', '\\_') || '%')")
            }
        }
    }

    fn cmp(&mut self, c: &Cmp) -> String {
        if c.any {
            // Any item of the left array (arrays only: no row for anything else).
            let Operand::Field(path) = &c.left else {
                return self.cmp(&Cmp { any: false, ..c.clone() });
            };
            if column(path).is_some() {
                return "FALSE".into();
            }
            let p = path_literal(path);
            let item = Side::Expr("nullif(item.value, 'null'::jsonb)".into(), Kind::Json);
            let right = self.side(&c.right);
            let test = self.test(&item, c.op, &right);
            return format!(
                "EXISTS (SELECT 1 FROM jsonb_array_elements(CASE WHEN jsonb_typeof(records.data #> {p}) = 'array' \
                 THEN records.data #> {p} END) AS item(value) WHERE {test})"
            );
        }
        let (left, right) = (self.side(&c.left), self.side(&c.right));
        self.test(&left, c.op, &right)
    }

    /// `left op right`, null-safe for `=` and `!=`; an ordered comparison of a JSON
    /// value with a number or a string holds only for a value of that type.
    fn test(&mut self, left: &Side, op: Op, right: &Side) -> String {
        match op {
            Op::Like => {
                let (l, r) = (self.text(left), self.contains(right));
                format!("({l} ILIKE {r})")
            }
            Op::NotLike => {
                let (l, r) = (self.text(left), self.contains(right));
                format!("({l} IS NULL OR {l} NOT ILIKE {r})")
            }
            Op::Eq | Op::Ne => {
                let eq = op == Op::Eq;
                match (left, right) {
                    (side, Side::Lit(Lit::Null)) | (Side::Lit(Lit::Null), side) => {
                        let e = self.json(side);
                        format!("({e} IS {}NULL)", if eq { "" } else { "NOT " })
                    }
                    // A literal is never NULL: `=` may use an index.
                    (Side::Lit(_), _) | (_, Side::Lit(_)) => {
                        let (l, r) = self.pair(left, right);
                        if eq { format!("({l} = {r})") } else { format!("({l} IS DISTINCT FROM {r})") }
                    }
                    _ => {
                        let (l, r) = (self.json(left), self.json(right));
                        format!("({l} IS {}DISTINCT FROM {r})", if eq { "NOT " } else { "" })
                    }
                }
            }
            Op::Gt | Op::Ge | Op::Lt | Op::Le => {
                let sym = match op {
                    Op::Gt => ">",
                    Op::Ge => ">=",
                    Op::Lt => "<",
                    _ => "<=",
                };
                let kind = match right {
                    Side::Lit(Lit::Json(serde_json::Value::Number(_))) => Some("number"),
                    Side::Lit(Lit::Json(serde_json::Value::String(_))) => Some("string"),
                    _ => None,
                };
                let (l, r) = self.pair(left, right);
                match (left, kind) {
                    (Side::Expr(_, Kind::Json), Some(kind)) => {
                        format!("(jsonb_typeof({l}) = '{kind}' AND {l} {sym} {r})")
                    }
                    _ => format!("({l} {sym} {r})"),
                }
            }
        }
    }

    fn expr(&mut self, e: &Expr) -> String {
        match e {
            Expr::Cmp(c) => self.cmp(c),
            // No terms: true for all of none, false for any of none.
            Expr::And(items) if items.is_empty() => "TRUE".into(),
            Expr::Or(items) if items.is_empty() => "FALSE".into(),
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

/// `e` as PostgreSQL's `WHERE` clause for `request`, parameters from `$first` on.
pub fn postgres(e: &Expr, request: &Request, first: usize) -> Clause {
    let mut b = Builder { params: vec![None; first.saturating_sub(1)], request };
    let sql = b.expr(e);
    Clause { sql, params: b.params.split_off(first.saturating_sub(1)) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::parse;

    #[test]
    fn values_are_parameters_and_the_text_depends_on_the_shape_only() {
        for filter in [
            "a = 'x' && (b ~ \"y\" || c ?= 'z') && d !~ 'w' && e > 'v' && f ?~ 'u'",
            "title = \"' OR 1=1 --\" || owner = @request.auth.id && id = 'r1' && version > 2",
        ] {
            let c = postgres(&parse(filter).unwrap(), &Request::default(), 1);
            assert!(!c.sql.contains("OR 1=1") && !c.sql.contains("'x'"), "{}", c.sql);
            assert!(c.sql.contains("$1") && !c.params.is_empty(), "{}", c.sql);
        }
        let c = postgres(&parse("a = 'x'").unwrap(), &Request::default(), 3);
        assert!(c.sql.contains("$3") && c.params.len() == 1, "{c:?}");
        // A hostile path segment cannot leave the literal.
        assert_eq!(field_expr(&["a'b".into(), "c}".into()]), "nullif(records.data #> '{ab,c}', 'null'::jsonb)");
    }
}
