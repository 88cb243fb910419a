//! The filter language of the database product, PocketBase's: comparisons of fields,
//! literals and request macros, joined by `&&` and `||` with parentheses.
//!
//! ```text
//! status = "paid" && (total >= 100 || tags ?= "vip") && owner = @request.auth.id
//! ```
//!
//! | Operator | Meaning |
//! |---|---|
//! | `=` `!=` | equal, not equal (`null` compares as SQL's `IS` / `IS NOT`) |
//! | `>` `>=` `<` `<=` | ordered comparison (numbers, strings, dates as ISO strings) |
//! | `~` `!~` | contains, does not contain (a string's substring, case-insensitive) |
//! | `?=` `?!=` `?>` `?>=` `?<` `?<=` `?~` `?!~` | any of an array's items |
//!
//! Operands: field paths (`a.b.c`: letters, digits and `_`, not starting with a digit),
//! strings (`'…'` or `"…"`, with `\` escaping the quote and `\`), numbers, `true`,
//! `false`, `null`, and macros (`@request.auth.<field>`, `@now`, `@todayStart`,
//! `@todayEnd`). `&&` binds tighter than `||`.
//!
//! [`parse`] gives an [`Expr`] or a [`FilterError`] with the position (in characters,
//! from 0) and what was expected there. The tree is data: whatever turns it into a query
//! passes every value as a parameter, never as text of the query. Limits keep a hostile
//! filter cheap: [`MAX_LEN`] characters, [`MAX_DEPTH`] nested parentheses, [`MAX_TERMS`]
//! comparisons.

use std::fmt;

/// The longest filter, in characters.
pub const MAX_LEN: usize = 4096;
/// The deepest nesting of parentheses.
pub const MAX_DEPTH: usize = 16;
/// The most comparisons in one filter.
pub const MAX_TERMS: usize = 64;
/// The most segments of a field path (`a.b.c` has 3).
pub const MAX_PATH: usize = 8;

/// A parsed filter.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// Every one holds.
    And(Vec<Expr>),
    /// At least one holds.
    Or(Vec<Expr>),
    /// A comparison.
    Cmp(Cmp),
}

/// `left op right`.
#[derive(Debug, Clone, PartialEq)]
pub struct Cmp {
    /// The left side (for `?` forms, the array).
    pub left: Operand,
    /// The operator.
    pub op: Op,
    /// The `?` form: any of the left array's items.
    pub any: bool,
    /// The right side.
    pub right: Operand,
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `=`
    Eq,
    /// `!=`
    Ne,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `~`: contains
    Like,
    /// `!~`: does not contain
    NotLike,
}

impl Op {
    /// How it is written.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Eq => "=",
            Op::Ne => "!=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Like => "~",
            Op::NotLike => "!~",
        }
    }
}

/// One side of a comparison.
#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    /// A field of the record: its path.
    Field(Vec<String>),
    /// A string.
    Str(String),
    /// A number.
    Num(f64),
    /// `true` or `false`.
    Bool(bool),
    /// `null`.
    Null,
    /// A macro: `@request.auth.id` is `["request", "auth", "id"]`.
    Macro(Vec<String>),
}

/// Why a filter was refused: where (characters from the start) and what was expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterError {
    /// The position, in characters from 0.
    pub pos: usize,
    /// What would have been right there.
    pub expected: String,
    /// What was there (`end of filter` at the end).
    pub found: String,
}

impl fmt::Display for FilterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at {}: expected {}, found {}", self.pos, self.expected, self.found)
    }
}

impl std::error::Error for FilterError {}

/// The macros a filter may name.
const MACROS: [&str; 3] = ["now", "todayStart", "todayEnd"];
/// The caller's fields a filter may name (`@request.auth.id`): any other would be `""`
/// for everyone, so a rule naming one would not mean what it says.
pub const AUTH_FIELDS: [&str; 4] = ["id", "name", "type", "verified"];

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(Vec<String>),
    Macro(Vec<String>),
    Str(String),
    Num(f64),
    Op(Op, bool),
    And,
    Or,
    Open,
    Close,
    End,
}

impl Tok {
    fn describe(&self) -> String {
        match self {
            Tok::Ident(p) => format!("field {}", p.join(".")),
            Tok::Macro(p) => format!("@{}", p.join(".")),
            Tok::Str(s) => format!("string {s:?}"),
            Tok::Num(n) => format!("number {n}"),
            Tok::Op(op, any) => format!("operator {}{}", if *any { "?" } else { "" }, op.as_str()),
            Tok::And => "&&".into(),
            Tok::Or => "||".into(),
            Tok::Open => "(".into(),
            Tok::Close => ")".into(),
            Tok::End => "end of filter".into(),
        }
    }
}

struct Lexer {
    chars: Vec<char>,
    at: usize,
}

fn err(pos: usize, expected: impl Into<String>, found: impl Into<String>) -> FilterError {
    FilterError { pos, expected: expected.into(), found: found.into() }
}

fn ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

impl Lexer {
    fn peek(&self, ahead: usize) -> Option<char> {
        self.chars.get(self.at + ahead).copied()
    }

    /// The next token and where it starts.
    fn next(&mut self) -> Result<(usize, Tok), FilterError> {
        while self.peek(0).is_some_and(char::is_whitespace) {
            self.at += 1;
        }
        let start = self.at;
        let Some(c) = self.peek(0) else { return Ok((start, Tok::End)) };
        let two = |l: &mut Lexer, t: Tok| {
            l.at += 2;
            Ok((start, t))
        };
        match (c, self.peek(1)) {
            ('&', Some('&')) => return two(self, Tok::And),
            ('|', Some('|')) => return two(self, Tok::Or),
            ('(', _) => {
                self.at += 1;
                return Ok((start, Tok::Open));
            }
            (')', _) => {
                self.at += 1;
                return Ok((start, Tok::Close));
            }
            ('\'' | '"', _) => return self.string(start, c),
            ('@', _) => {
                self.at += 1;
                let path = self.path(self.at)?;
                return Ok((start, Tok::Macro(path)));
            }
            _ => {}
        }
        if c == '?' || c == '=' || c == '!' || c == '>' || c == '<' || c == '~' {
            return self.operator(start);
        }
        if c.is_ascii_digit() || (c == '-' && self.peek(1).is_some_and(|d| d.is_ascii_digit() || d == '.')) || c == '.'
        {
            return self.number(start);
        }
        if ident_start(c) {
            let path = self.path(start)?;
            return Ok((start, Tok::Ident(path)));
        }
        Err(err(start, "a field, a value, an operator, &&, || or a parenthesis", format!("{c:?}")))
    }

    fn operator(&mut self, start: usize) -> Result<(usize, Tok), FilterError> {
        let any = self.peek(0) == Some('?');
        if any {
            self.at += 1;
        }
        let op = match (self.peek(0), self.peek(1)) {
            (Some('!'), Some('=')) => (Op::Ne, 2),
            (Some('!'), Some('~')) => (Op::NotLike, 2),
            (Some('>'), Some('=')) => (Op::Ge, 2),
            (Some('<'), Some('=')) => (Op::Le, 2),
            (Some('='), _) => (Op::Eq, 1),
            (Some('>'), _) => (Op::Gt, 1),
            (Some('<'), _) => (Op::Lt, 1),
            (Some('~'), _) => (Op::Like, 1),
            (other, _) => {
                let found = other.map_or("end of filter".to_string(), |c| format!("{c:?}"));
                return Err(err(self.at, "an operator: = != > >= < <= ~ !~ (after ? for any of)", found));
            }
        };
        self.at += op.1;
        Ok((start, Tok::Op(op.0, any)))
    }

    fn string(&mut self, start: usize, quote: char) -> Result<(usize, Tok), FilterError> {
        self.at += 1;
        let mut s = String::new();
        loop {
            match self.peek(0) {
                None => return Err(err(self.at, format!("the closing {quote}"), "end of filter")),
                Some('\\') => match self.peek(1) {
                    Some(e) if e == quote || e == '\\' => {
                        s.push(e);
                        self.at += 2;
                    }
                    Some(e) => {
                        return Err(err(self.at + 1, format!("\\{quote} or \\\\ after \\"), format!("{e:?}")));
                    }
                    None => return Err(err(self.at + 1, format!("the closing {quote}"), "end of filter")),
                },
                Some(c) if c == quote => {
                    self.at += 1;
                    return Ok((start, Tok::Str(s)));
                }
                Some(c) => {
                    s.push(c);
                    self.at += 1;
                }
            }
        }
    }

    fn number(&mut self, start: usize) -> Result<(usize, Tok), FilterError> {
        let mut end = self.at;
        if self.chars[end] == '-' {
            end += 1;
        }
        while self.chars.get(end).is_some_and(|c| c.is_ascii_digit() || *c == '.') {
            end += 1;
        }
        let text: String = self.chars[self.at..end].iter().collect();
        if self.chars.get(end).is_some_and(|c| ident_char(*c)) {
            return Err(err(end, "a number", format!("{:?}", self.chars[end])));
        }
        let n =
            text.parse::<f64>().ok().filter(|n| n.is_finite()).ok_or_else(|| err(start, "a number", text.clone()))?;
        self.at = end;
        Ok((start, Tok::Num(n)))
    }

    /// `a.b.c` from `at`.
    fn path(&mut self, at: usize) -> Result<Vec<String>, FilterError> {
        self.at = at;
        let mut path = Vec::new();
        loop {
            let seg_start = self.at;
            match self.peek(0) {
                Some(c) if ident_start(c) => {}
                other => {
                    let found = other.map_or("end of filter".to_string(), |c| format!("{c:?}"));
                    return Err(err(seg_start, "a name (letters, digits and _, not starting with a digit)", found));
                }
            }
            while self.peek(0).is_some_and(ident_char) {
                self.at += 1;
            }
            path.push(self.chars[seg_start..self.at].iter().collect::<String>());
            if path.len() > MAX_PATH {
                return Err(err(seg_start, format!("at most {MAX_PATH} parts in a field path"), "more"));
            }
            if self.peek(0) == Some('.') {
                self.at += 1;
            } else {
                return Ok(path);
            }
        }
    }
}

struct Parser {
    lexer: Lexer,
    tok: Tok,
    pos: usize,
    depth: usize,
    terms: usize,
}

impl Parser {
    fn advance(&mut self) -> Result<(), FilterError> {
        let (pos, tok) = self.lexer.next()?;
        self.pos = pos;
        self.tok = tok;
        Ok(())
    }

    /// `and ( || and )*`
    fn or(&mut self) -> Result<Expr, FilterError> {
        let mut items = vec![self.and()?];
        while self.tok == Tok::Or {
            self.advance()?;
            items.push(self.and()?);
        }
        Ok(if items.len() == 1 { items.remove(0) } else { Expr::Or(items) })
    }

    /// `term ( && term )*`
    fn and(&mut self) -> Result<Expr, FilterError> {
        let mut items = vec![self.term()?];
        while self.tok == Tok::And {
            self.advance()?;
            items.push(self.term()?);
        }
        Ok(if items.len() == 1 { items.remove(0) } else { Expr::And(items) })
    }

    /// `( or )` or `operand op operand`
    fn term(&mut self) -> Result<Expr, FilterError> {
        if self.tok == Tok::Open {
            self.depth += 1;
            if self.depth > MAX_DEPTH {
                return Err(err(self.pos, format!("at most {MAX_DEPTH} nested parentheses"), "more"));
            }
            self.advance()?;
            let inner = self.or()?;
            if self.tok != Tok::Close {
                return Err(err(self.pos, "&&, || or )", self.tok.describe()));
            }
            self.depth -= 1;
            self.advance()?;
            return Ok(inner);
        }
        self.terms += 1;
        if self.terms > MAX_TERMS {
            return Err(err(self.pos, format!("at most {MAX_TERMS} comparisons"), "more"));
        }
        let left = self.operand("a field, a value or (")?;
        let (op, any) = match &self.tok {
            Tok::Op(op, any) => (*op, *any),
            other => {
                return Err(err(self.pos, "an operator: = != > >= < <= ~ !~ (after ? for any of)", other.describe()));
            }
        };
        self.advance()?;
        let right = self.operand("a field or a value")?;
        Ok(Expr::Cmp(Cmp { left, op, any, right }))
    }

    fn operand(&mut self, expected: &str) -> Result<Operand, FilterError> {
        let o = match &self.tok {
            Tok::Ident(p) if p.len() == 1 && p[0] == "true" => Operand::Bool(true),
            Tok::Ident(p) if p.len() == 1 && p[0] == "false" => Operand::Bool(false),
            Tok::Ident(p) if p.len() == 1 && p[0] == "null" => Operand::Null,
            Tok::Ident(p) => Operand::Field(p.clone()),
            Tok::Str(s) => Operand::Str(s.clone()),
            Tok::Num(n) => Operand::Num(*n),
            Tok::Macro(p) => {
                let known = (p.len() == 1 && MACROS.contains(&p[0].as_str()))
                    || (p.len() == 3 && p[0] == "request" && p[1] == "auth" && AUTH_FIELDS.contains(&p[2].as_str()));
                if !known {
                    return Err(err(
                        self.pos,
                        "a macro: @request.auth.id, @request.auth.name, @request.auth.type, @request.auth.verified, @now, @todayStart or @todayEnd",
                        format!("@{}", p.join(".")),
                    ));
                }
                Operand::Macro(p.clone())
            }
            other => return Err(err(self.pos, expected, other.describe())),
        };
        self.advance()?;
        Ok(o)
    }
}

/// Parses a filter.
pub fn parse(filter: &str) -> Result<Expr, FilterError> {
    // (Bytes first: a huge input is refused before it is copied.)
    if filter.len() > MAX_LEN * 4 {
        return Err(err(MAX_LEN, format!("at most {MAX_LEN} characters"), format!("{} bytes", filter.len())));
    }
    let chars: Vec<char> = filter.chars().collect();
    if chars.len() > MAX_LEN {
        return Err(err(MAX_LEN, format!("at most {MAX_LEN} characters"), format!("{}", chars.len())));
    }
    let mut p = Parser { lexer: Lexer { chars, at: 0 }, tok: Tok::End, pos: 0, depth: 0, terms: 0 };
    p.advance()?;
    if p.tok == Tok::End {
        return Err(err(0, "a comparison, like status = \"paid\"", "end of filter"));
    }
    let e = p.or()?;
    if p.tok != Tok::End {
        return Err(err(p.pos, "&&, || or the end", p.tok.describe()));
    }
    Ok(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(p: &str) -> Operand {
        Operand::Field(p.split('.').map(str::to_string).collect())
    }

    fn cmp(left: Operand, op: Op, any: bool, right: Operand) -> Expr {
        Expr::Cmp(Cmp { left, op, any, right })
    }

    #[test]
    fn comparisons_logic_and_precedence() {
        assert_eq!(parse("status = 'paid'").unwrap(), cmp(field("status"), Op::Eq, false, Operand::Str("paid".into())));
        let e = parse(r#"a = 1 || b != "x" && (c.d >= -2.5 || tags ?= "vip") && e = null"#).unwrap();
        let expected = Expr::Or(vec![
            cmp(field("a"), Op::Eq, false, Operand::Num(1.0)),
            Expr::And(vec![
                cmp(field("b"), Op::Ne, false, Operand::Str("x".into())),
                Expr::Or(vec![
                    cmp(field("c.d"), Op::Ge, false, Operand::Num(-2.5)),
                    cmp(field("tags"), Op::Eq, true, Operand::Str("vip".into())),
                ]),
                cmp(field("e"), Op::Eq, false, Operand::Null),
            ]),
        ]);
        assert_eq!(e, expected);
        for (text, op, any) in [
            ("x!=1", Op::Ne, false),
            ("x>1", Op::Gt, false),
            ("x>=1", Op::Ge, false),
            ("x<1", Op::Lt, false),
            ("x<=1", Op::Le, false),
            ("x~1", Op::Like, false),
            ("x!~1", Op::NotLike, false),
            ("x?!=1", Op::Ne, true),
            ("x?>=1", Op::Ge, true),
            ("x?~1", Op::Like, true),
            ("x?!~1", Op::NotLike, true),
        ] {
            assert_eq!(parse(text).unwrap(), cmp(field("x"), op, any, Operand::Num(1.0)), "{text}");
        }
        assert_eq!(
            parse("owner = @request.auth.id && done = false && at < @now").unwrap(),
            Expr::And(vec![
                cmp(field("owner"), Op::Eq, false, Operand::Macro(vec!["request".into(), "auth".into(), "id".into()])),
                cmp(field("done"), Op::Eq, false, Operand::Bool(false)),
                cmp(field("at"), Op::Lt, false, Operand::Macro(vec!["now".into()])),
            ])
        );
        assert_eq!(
            parse(r#"s = 'it\'s \\ "q"'"#).unwrap(),
            cmp(field("s"), Op::Eq, false, Operand::Str(r#"it's \ "q""#.into()))
        );
    }

    #[test]
    fn errors_say_where_and_what_was_expected() {
        for (text, pos, expected, found) in [
            ("", 0, "a comparison", "end of filter"),
            ("status", 6, "an operator", "end of filter"),
            ("status =", 8, "a field or a value", "end of filter"),
            ("status = 'paid", 14, "the closing '", "end of filter"),
            ("a = 1 &&", 8, "a field, a value or (", "end of filter"),
            ("(a = 1", 6, "&&, || or )", "end of filter"),
            ("a = 1)", 5, "&&, || or the end", ")"),
            ("a = 1 b = 2", 6, "&&, || or the end", "field b"),
            ("a == 1", 3, "a field or a value", "operator ="),
            ("a ? 1", 3, "an operator", "' '"),
            ("a = @request.query.x", 4, "a macro", "@request.query.x"),
            ("a = 1x", 5, "a number", "'x'"),
            ("a = $1", 4, "a field, a value", "'$'"),
            ("a & b", 2, "a field, a value", "'&'"),
            ("1a = 2", 1, "a number", "'a'"),
            ("a. = 1", 2, "a name", "' '"),
            ("s = 'x\\n'", 7, "\\' or \\\\ after \\", "'n'"),
        ] {
            let e = parse(text).unwrap_err();
            assert_eq!(e.pos, pos, "{text:?}: {e}");
            assert!(e.expected.contains(expected), "{text:?}: {e}");
            assert!(e.found.contains(found), "{text:?}: {e}");
        }
    }

    #[test]
    fn injections_are_values_or_errors_never_text() {
        // Quotes inside a string are the string's.
        let e = parse(r#"name = "' OR 1=1 --""#).unwrap();
        assert_eq!(e, cmp(field("name"), Op::Eq, false, Operand::Str("' OR 1=1 --".into())));
        let e = parse(r#"name = '"); DROP TABLE records; --'"#).unwrap();
        assert_eq!(e, cmp(field("name"), Op::Eq, false, Operand::Str(r#""); DROP TABLE records; --"#.into())));
        // Outside a string they are no token at all.
        for bad in
            ["name = 'x' OR 1=1", "name = x; DROP TABLE t", "name = 'a' -- c", "na\u{202e}me = 1", "ｎａｍｅ = 1"]
        {
            assert!(parse(bad).is_err(), "{bad:?} parsed");
        }
        // Unicode in strings is kept as it is.
        assert_eq!(parse("s = 'é\u{202e}'").unwrap(), cmp(field("s"), Op::Eq, false, Operand::Str("é\u{202e}".into())));
    }

    #[test]
    fn limits_hold() {
        let deep = format!("{}a = 1{}", "(".repeat(MAX_DEPTH + 1), ")".repeat(MAX_DEPTH + 1));
        assert!(parse(&deep).unwrap_err().expected.contains("nested"));
        let ok = format!("{}a = 1{}", "(".repeat(MAX_DEPTH), ")".repeat(MAX_DEPTH));
        assert!(parse(&ok).is_ok());
        let many = vec!["a = 1"; MAX_TERMS + 1].join(" && ");
        assert!(parse(&many).unwrap_err().expected.contains("comparisons"));
        let long = format!("a = '{}'", "x".repeat(MAX_LEN));
        assert!(parse(&long).unwrap_err().expected.contains("characters"));
        let path = ["p"; MAX_PATH + 1].join(".");
        assert!(parse(&format!("{path} = 1")).unwrap_err().expected.contains("parts"));
    }

    #[test]
    fn no_input_panics() {
        // A small deterministic fuzz: every prefix and many mutations of real filters.
        let seeds = [r#"a = 1 || (b.c ?~ "x" && d != @request.auth.id) && e >= -1.5"#, "s = 'it\\'s'", "((x<=@now))"];
        let alphabet: Vec<char> = "ab.@=!<>~?&|()'\"\\ -1.5é\u{0}".chars().collect();
        let mut state = 0x2545F4914F6CDD1Du64;
        for seed in seeds {
            let chars: Vec<char> = seed.chars().collect();
            for i in 0..=chars.len() {
                let _ = parse(&chars[..i].iter().collect::<String>());
            }
            for _ in 0..2000 {
                let mut c = chars.clone();
                for _ in 0..3 {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    let at = (state as usize) % (c.len() + 1);
                    let ch = alphabet[(state >> 32) as usize % alphabet.len()];
                    match state % 3 {
                        0 if at < c.len() => c[at] = ch,
                        1 => c.insert(at, ch),
                        _ if at < c.len() => {
                            c.remove(at);
                        }
                        _ => {}
                    }
                }
                let text: String = c.into_iter().collect();
                if let Err(e) = parse(&text) {
                    assert!(e.pos <= text.chars().count(), "{text:?}: {e}");
                }
            }
        }
    }
}
