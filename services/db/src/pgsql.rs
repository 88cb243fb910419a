//! A parsed filter as PostgreSQL's `WHERE` clause over a collection's records, the
//! counterpart of [`crate::sql`] for the cluster's backend: every value is a parameter
//! (sent as text and cast in the query), never text of the query.
//!
//! Records are rows of `db_records AS records`: `id`, `created`, `updated` (text, in the
//! `C` collation) and `version` (bigint) are columns; any other field is
//! `nullif(records.data #> '{"a","b"}', 'null')` (JSONB; a JSON `null` is SQL's `NULL`, as
//! SQLite's `json_extract` gives it), which is also what the collections' indexes are made
//! of.
//!
//! The meaning is SQLite's, where the two can agree (the same records match on both
//! backends: a differential test compares them): `true` and `false` equal 1 and 0, a
//! column compares with a literal as the rules' evaluator binds them (text never equals
//! a number, and is above any), `~` folds ASCII
//! letters only and reads a boolean as `1` or `0`, and ordered comparisons hold within a
//! type. Where SQLite's rules are too odd to copy (ordering across types: text above
//! numbers; `~` over an object's JSON text), a comparison here is false: a list on
//! PostgreSQL never shows a record that the same rule on SQLite would hide.

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

/// What an operand's SQL is.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    /// JSONB (never JSON `null`: that is SQL `NULL`).
    Json,
    /// A text column.
    Text,
    /// A bigint column.
    Int,
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

/// A field's path as a PostgreSQL text-array literal (`'{"a","b"}'`, each element quoted
/// so that none reads as `NULL`): written into the query so an index on the same
/// expression is used. Only names are written (letters, digits and `_`, as the parser
/// reads them); anything else in a segment is dropped.
fn path_literal(path: &[String]) -> String {
    let clean: Vec<String> = path
        .iter()
        .map(|s| format!("\"{}\"", s.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_').collect::<String>()))
        .collect();
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

/// A literal of a filter (or a macro's value), as SQLite holds it.
#[derive(Debug, Clone, PartialEq)]
enum Lit {
    Null,
    Str(String),
    Num(f64),
    Bool(bool),
}

impl Lit {
    /// As SQLite compares it: booleans are 1 and 0.
    fn number(&self) -> Option<f64> {
        match self {
            Lit::Num(n) => Some(*n),
            Lit::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
            _ => None,
        }
    }

    /// As SQLite writes the number as text (an integer without a fraction).
    fn number_text(n: f64) -> String {
        if n.fract() == 0.0 && n.abs() < 9.0e15 { format!("{}", n as i64) } else { format!("{n}") }
    }

    /// The text `~` looks for (`crate::sql`'s: a boolean literal is `true`/`false`).
    fn pattern_text(&self) -> Option<String> {
        match self {
            Lit::Null => None,
            Lit::Str(s) => Some(s.clone()),
            Lit::Num(n) => Some(n.to_string()),
            Lit::Bool(b) => Some(b.to_string()),
        }
    }

    /// As JSON.
    fn json(&self) -> Option<String> {
        match self {
            Lit::Null => None,
            Lit::Str(s) => Some(serde_json::Value::String(s.clone()).to_string()),
            Lit::Num(n) => Some(Self::number_text(*n)),
            Lit::Bool(b) => Some(b.to_string()),
        }
    }
}

/// An operand as SQL: an expression of a kind, or a literal.
enum Side {
    Expr(String, Kind),
    Lit(Lit),
}

/// ASCII letters of `x` (text) in lower case, as SQLite's LIKE folds them.
fn fold(x: &str) -> String {
    format!("translate({x}, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz')")
}

/// A JSONB value's text as SQLite's `json_extract` gives it for LIKE: a string's own
/// text, a number's digits, a boolean's 1 or 0; none for an array or an object.
fn json_text(e: &str) -> String {
    format!(
        "(CASE jsonb_typeof({e}) WHEN 'boolean' THEN (CASE WHEN {e} = 'true'::jsonb THEN '1' ELSE '0' END) \
         WHEN 'string' THEN {e} #>> '{{}}' WHEN 'number' THEN {e} #>> '{{}}' END)"
    )
}

/// A JSONB number or boolean as a number (booleans are 1 and 0).
fn json_number(e: &str) -> String {
    format!("(CASE jsonb_typeof({e}) WHEN 'boolean' THEN ({e})::boolean::int::numeric ELSE ({e})::numeric END)")
}

/// The mirror of an ordered operator (`a < b` is `b > a`).
fn flip(op: Op) -> Op {
    match op {
        Op::Gt => Op::Lt,
        Op::Ge => Op::Le,
        Op::Lt => Op::Gt,
        Op::Le => Op::Ge,
        o => o,
    }
}

fn symbol(op: Op) -> &'static str {
    match op {
        Op::Gt => ">",
        Op::Ge => ">=",
        Op::Lt => "<",
        _ => "<=",
    }
}

/// `a op b` for values that order (SQLite's: numbers below text).
fn order<T: PartialOrd>(a: T, op: Op, b: T) -> bool {
    match op {
        Op::Gt => a > b,
        Op::Ge => a >= b,
        Op::Lt => a < b,
        _ => a <= b,
    }
}

fn truth(b: bool) -> String {
    if b { "TRUE".into() } else { "FALSE".into() }
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
            Operand::Str(s) => Side::Lit(Lit::Str(s.clone())),
            Operand::Num(n) => Side::Lit(Lit::Num(*n)),
            Operand::Bool(b) => Side::Lit(Lit::Bool(*b)),
            Operand::Null => Side::Lit(Lit::Null),
            Operand::Macro(path) => Side::Lit(match path.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
                ["now"] => Lit::Str(self.request.now.clone()),
                ["todayStart"] => Lit::Str(self.request.today.0.clone()),
                ["todayEnd"] => Lit::Str(self.request.today.1.clone()),
                // An anonymous caller's fields (and unknown ones) are "", as in SQLite's.
                ["request", "auth", field] => match self.request.auth.get(*field) {
                    Some(Param::Null) | None => Lit::Str(String::new()),
                    Some(Param::Text(t)) => Lit::Str(t.clone()),
                    Some(Param::Int(i)) => Lit::Num(*i as f64),
                    Some(Param::Real(r)) => Lit::Num(*r),
                },
                _ => Lit::Str(String::new()),
            }),
        }
    }

    /// An expression side as JSONB (columns as a JSON string or number).
    fn json(e: &str, kind: Kind) -> String {
        match kind {
            Kind::Json => e.to_string(),
            _ => format!("to_jsonb({e})"),
        }
    }

    /// A JSON literal as a JSONB parameter.
    fn json_param(&mut self, l: &Lit) -> String {
        let p = self.param(l.json());
        format!("{p}::text::jsonb")
    }

    /// Whether `left = right` holds as SQLite's `IS` says (NULL, as false, where it does
    /// not: the form an index serves; no `NOT` is put before it unguarded).
    fn equal(&mut self, left: &Side, right: &Side) -> String {
        match (left, right) {
            (Side::Lit(a), Side::Lit(b)) => truth(match (a, b) {
                (Lit::Null, Lit::Null) => true,
                (Lit::Str(x), Lit::Str(y)) => x == y,
                (x, y) => x.number().is_some() && x.number() == y.number(),
            }),
            (Side::Expr(e, k), Side::Lit(Lit::Null)) | (Side::Lit(Lit::Null), Side::Expr(e, k)) => {
                format!("({} IS NULL)", Self::json(e, *k))
            }
            (Side::Expr(e, kind), Side::Lit(l)) | (Side::Lit(l), Side::Expr(e, kind)) => match kind {
                Kind::Json => match l {
                    Lit::Str(_) => format!("({e} = {})", self.json_param(l)),
                    // true is 1 and false 0 (and 1.0 is 1).
                    _ => match l.number() {
                        Some(n) if n == 1.0 || n == 0.0 => {
                            let (num, b) = (self.json_param(&Lit::Num(n)), self.json_param(&Lit::Bool(n == 1.0)));
                            format!("({e} IN ({num}, {b}))")
                        }
                        _ => format!("({e} = {})", self.json_param(l)),
                    },
                },
                // A column is compared as bound (no affinity): text never equals a number.
                Kind::Text => match l {
                    Lit::Str(t) => {
                        let p = self.param(Some(t.clone()));
                        format!("({e} = {p}::text)")
                    }
                    _ => "FALSE".into(),
                },
                Kind::Int => match l.number() {
                    Some(n) => {
                        let p = self.param(Some(n.to_string()));
                        format!("({e} = {p}::text::numeric)")
                    }
                    None => "FALSE".into(),
                },
            },
            (Side::Expr(a, ka), Side::Expr(b, kb)) => {
                let (a, b) = (Self::json(a, *ka), Self::json(b, *kb));
                // Numbers (booleans as 1 and 0) by value, text by text; an array's or an
                // object's text is not compared.
                format!(
                    "(CASE WHEN jsonb_typeof({a}) IN ('number', 'boolean') AND jsonb_typeof({b}) IN ('number', 'boolean') \
                     THEN {} = {} WHEN jsonb_typeof({a}) = 'string' AND jsonb_typeof({b}) = 'string' THEN {a} = {b} \
                     WHEN {a} IS NULL AND {b} IS NULL THEN TRUE ELSE FALSE END)",
                    json_number(&a),
                    json_number(&b)
                )
            }
        }
    }

    /// Whether `left != right` holds as SQLite's `IS NOT` says, never where it would hide
    /// the record: an array or an object is unequal to nothing but `null`.
    fn unequal(&mut self, left: &Side, right: &Side) -> String {
        let eq = self.equal(left, right);
        if matches!(left, Side::Lit(Lit::Null)) || matches!(right, Side::Lit(Lit::Null)) {
            return format!("(NOT {eq})");
        }
        let mut out = format!("(NOT coalesce({eq}, FALSE)");
        for (side, other) in [(left, right), (right, left)] {
            // An array's or object's JSON text (which SQLite compares) starts with [ or {:
            // it is unequal to any other literal.
            let unsure = match other {
                Side::Lit(Lit::Str(t)) => t.starts_with(['[', '{']),
                Side::Lit(_) => false,
                Side::Expr(..) => true,
            };
            if let (Side::Expr(e, Kind::Json), true) = (side, unsure) {
                out.push_str(&format!(" AND coalesce(jsonb_typeof({e}) NOT IN ('object', 'array'), TRUE)"));
            }
        }
        out.push(')');
        out
    }

    /// Whether `left op right` holds for an ordered operator: as SQLite's within a type
    /// (numbers and booleans as numbers, text bytewise), false across types.
    fn ordered(&mut self, left: &Side, op: Op, right: &Side) -> String {
        let sym = symbol(op);
        match (left, right) {
            (Side::Lit(a), Side::Lit(b)) => truth(match (a, b) {
                (Lit::Str(x), Lit::Str(y)) => order(x.as_bytes(), op, y.as_bytes()),
                (Lit::Null, _) | (_, Lit::Null) => false,
                // SQLite orders numbers below text.
                (Lit::Str(_), _) => matches!(op, Op::Gt | Op::Ge),
                (_, Lit::Str(_)) => matches!(op, Op::Lt | Op::Le),
                (x, y) => order(x.number(), op, y.number()),
            }),
            (Side::Lit(_), Side::Expr(..)) => self.ordered(right, flip(op), left),
            (Side::Expr(_, _), Side::Lit(Lit::Null)) => "FALSE".into(),
            (Side::Expr(e, kind), Side::Lit(l)) => match (kind, l) {
                (Kind::Json, Lit::Str(s)) => {
                    let p = self.param(Some(s.clone()));
                    format!("(jsonb_typeof({e}) = 'string' AND ({e} #>> '{{}}') COLLATE \"C\" {sym} {p}::text)")
                }
                (Kind::Json, Lit::Num(_)) => {
                    let p = self.json_param(l);
                    format!("(jsonb_typeof({e}) = 'number' AND {e} {sym} {p})")
                }
                (Kind::Json, _) => {
                    let p = self.param(l.number().map(|n| n.to_string()));
                    format!(
                        "(jsonb_typeof({e}) IN ('number', 'boolean') AND {} {sym} {p}::text::numeric)",
                        json_number(e)
                    )
                }
                // Columns compare as bound: text is above any number.
                (Kind::Text, Lit::Str(t)) => {
                    let p = self.param(Some(t.clone()));
                    format!("({e} {sym} {p}::text)")
                }
                (Kind::Text, _) => truth(matches!(op, Op::Gt | Op::Ge)),
                (Kind::Int, l) => match l.number() {
                    Some(n) => {
                        let p = self.param(Some(n.to_string()));
                        format!("({e} {sym} {p}::text::numeric)")
                    }
                    None => truth(matches!(op, Op::Lt | Op::Le)),
                },
            },
            (Side::Expr(a, ka), Side::Expr(b, kb)) => {
                let (a, b) = (Self::json(a, *ka), Self::json(b, *kb));
                format!(
                    "(CASE WHEN jsonb_typeof({a}) IN ('number', 'boolean') AND jsonb_typeof({b}) IN ('number', 'boolean') \
                     THEN {} {sym} {} WHEN jsonb_typeof({a}) = 'string' AND jsonb_typeof({b}) = 'string' \
                     THEN ({a} #>> '{{}}') COLLATE \"C\" {sym} ({b} #>> '{{}}') ELSE FALSE END)",
                    json_number(&a),
                    json_number(&b)
                )
            }
        }
    }

    /// An expression side's text for LIKE (none for an array or an object).
    fn text(e: &str, kind: Kind) -> String {
        match kind {
            Kind::Json => json_text(e),
            Kind::Text => e.to_string(),
            Kind::Int => format!("({e})::text"),
        }
    }

    /// `~`'s pattern: `%…%` with the value's `%`, `_` and `\` literal and its ASCII
    /// letters lower-cased; `NULL` (nothing matches) for `null`.
    fn pattern(&mut self, right: &Side) -> String {
        match right {
            Side::Lit(l) => match l.pattern_text() {
                Some(text) => {
                    let escaped =
                        text.to_ascii_lowercase().replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
                    let p = self.param(Some(format!("%{escaped}%")));
                    format!("{p}::text")
                }
                None => "NULL::text".into(),
            },
            Side::Expr(e, kind) => {
                let v = fold(&Self::text(e, *kind));
                format!("('%' || replace(replace(replace({v}, '\\', '\\\\'), '%', '\\%'), '_', '\\_') || '%')")
            }
        }
    }

    fn like(&mut self, left: &Side, negated: bool, right: &Side) -> String {
        let p = self.pattern(right);
        match left {
            Side::Lit(l) => {
                // A literal tested is bound as a value: a boolean is 1 or 0.
                let text = match l {
                    Lit::Null => None,
                    Lit::Str(s) => Some(s.to_ascii_lowercase()),
                    _ => l.number().map(Lit::number_text),
                };
                let p2 = self.param(text);
                let t = format!("{p2}::text");
                if negated {
                    format!("coalesce({t} NOT LIKE {p}, {t} IS NULL)")
                } else {
                    format!("coalesce({t} LIKE {p}, FALSE)")
                }
            }
            Side::Expr(e, kind) => {
                let t = fold(&Self::text(e, *kind));
                if !negated {
                    return format!("({t} LIKE {p})");
                }
                let null = Self::json(e, *kind);
                match kind {
                    // An array's or an object's text is not compared: it is not shown.
                    Kind::Json => format!(
                        "({null} IS NULL OR coalesce(jsonb_typeof({e}) NOT IN ('object', 'array') AND {t} NOT LIKE {p}, FALSE))"
                    ),
                    _ => format!("({null} IS NULL OR coalesce({t} NOT LIKE {p}, FALSE))"),
                }
            }
        }
    }

    fn test(&mut self, left: &Side, op: Op, right: &Side) -> String {
        match op {
            Op::Like => self.like(left, false, right),
            Op::NotLike => self.like(left, true, right),
            Op::Eq => self.equal(left, right),
            Op::Ne => self.unequal(left, right),
            _ => self.ordered(left, op, right),
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
    fn values_are_parameters_never_text() {
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
        // A hostile path segment cannot leave the literal, and none reads as NULL.
        assert_eq!(
            field_expr(&["a'b".into(), "null".into()]),
            "nullif(records.data #> '{\"ab\",\"null\"}', 'null'::jsonb)"
        );
    }
}
