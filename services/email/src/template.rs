//! Templates: a subject, a text body and an optional HTML body with `{{ variables }}`.
//!
//! Deliberately small: a variable is a name or a dotted path into the call's `vars`
//! (`{{ name }}`, `{{ order.id }}`) and nothing else — no loops, no expressions, no
//! filters — so no template can make the service loop or allocate without bound. Values
//! are escaped in the HTML body and never in the subject or text; a variable the call
//! does not give is an error, not an empty string; a rendered part is capped in size.

use crate::NAME;
use micro::Status;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The largest part of a template, in bytes.
pub(crate) const MAX_PART: usize = 64 * 1024;
/// The longest subject, in characters (RFC 5322's line limit).
pub(crate) const MAX_SUBJECT: usize = 998;
/// The largest rendered part, in bytes.
const MAX_RENDERED: usize = 512 * 1024;

/// A saved template.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Template {
    /// Its name: 1 to 64 of a-z, 0-9, '-' and '_'.
    pub name: String,
    /// The subject, a template.
    pub subject: String,
    /// The plain-text body, a template.
    pub text: String,
    /// The HTML body, a template whose values are escaped.
    #[serde(default)]
    pub html: Option<String>,
}

/// What a template renders to.
pub(crate) struct Rendered {
    pub(crate) subject: String,
    pub(crate) text: String,
    pub(crate) html: Option<String>,
}

fn bad(msg: impl Into<String>) -> Status {
    Status::bad_request(NAME, msg)
}

/// Checks a template's name.
pub(crate) fn check_name(name: &str) -> Result<(), Status> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !ok {
        return Err(bad(format!("invalid template name {name:?}: use 1 to 64 of a-z, 0-9, '-' and '_'")));
    }
    Ok(())
}

/// A piece of a parsed template.
enum Piece<'a> {
    Text(&'a str),
    Var(&'a str),
}

/// Splits `src` into text and `{{ path }}` variables.
fn parse(src: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut out = Vec::new();
    let mut rest = src;
    while let Some(start) = rest.find("{{") {
        out.push(Piece::Text(&rest[..start]));
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or("a {{ is not closed with }}")?;
        let path = after[..end].trim();
        let valid = !path.is_empty()
            && path.split('.').all(|p| {
                !p.is_empty()
                    && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                    && !p.as_bytes()[0].is_ascii_digit()
            });
        if !valid {
            return Err(format!("{{{{ {path} }}}} is not a variable: use {{{{ name }}}} or {{{{ name.field }}}}"));
        }
        out.push(Piece::Var(path));
        rest = &after[end + 2..];
    }
    if rest.contains("}}") {
        return Err("a }} has no {{".into());
    }
    out.push(Piece::Text(rest));
    Ok(out)
}

/// Renders one part.
fn render_part(src: &str, vars: &serde_json::Value, html: bool) -> Result<String, String> {
    let mut out = String::new();
    for piece in parse(src)? {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Var(path) => {
                let mut v = vars;
                for p in path.split('.') {
                    v = v.get(p).ok_or_else(|| format!("{path} is undefined: give it in vars"))?;
                }
                let s = match v {
                    serde_json::Value::String(s) => s.clone(),
                    serde_json::Value::Number(n) => n.to_string(),
                    serde_json::Value::Bool(b) => b.to_string(),
                    _ => return Err(format!("{path} is not a string, number or boolean")),
                };
                if html { out.push_str(&micro::web::escape_html(&s)) } else { out.push_str(&s) }
            }
        }
        if out.len() > MAX_RENDERED {
            return Err(format!("it renders to more than {MAX_RENDERED} bytes"));
        }
    }
    Ok(out)
}

/// Checks a template before it is saved: its name, sizes and syntax.
pub(crate) fn check(t: &Template) -> Result<(), Status> {
    check_name(&t.name)?;
    if t.subject.trim().is_empty() {
        return Err(bad("a template needs a subject"));
    }
    for (part, src) in [("subject", Some(&t.subject)), ("text", Some(&t.text)), ("html", t.html.as_ref())] {
        let Some(src) = src else { continue };
        if src.len() > MAX_PART {
            return Err(bad(format!("the template's {part} is larger than {MAX_PART} bytes")));
        }
        parse(src).map_err(|e| bad(format!("the template's {part} does not parse: {e}")))?;
    }
    Ok(())
}

/// Renders `t` with `vars` (a JSON object).
pub(crate) fn render(t: &Template, vars: &serde_json::Value) -> Result<Rendered, Status> {
    let run = |part: &str, src: &str, html: bool| {
        render_part(src, vars, html).map_err(|e| bad(format!("template {:?}, {part}: {e}", t.name)))
    };
    Ok(Rendered {
        subject: run("subject", &t.subject, false)?,
        text: run("text", &t.text, false)?,
        html: t.html.as_deref().map(|h| run("html", h, true)).transpose()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn t(subject: &str, text: &str, html: Option<&str>) -> Template {
        Template { name: "t".into(), subject: subject.into(), text: text.into(), html: html.map(Into::into) }
    }

    #[test]
    fn renders_and_escapes_html_only() {
        let r = render(
            &t("Hi {{ name }}", "Hello {{name}}! Order {{ order.id }}", Some("<p>Hello {{ name }}</p>")),
            &json!({"name": "<b>Bob</b> & co", "order": {"id": 42}}),
        )
        .unwrap();
        assert_eq!(r.subject, "Hi <b>Bob</b> & co");
        assert_eq!(r.text, "Hello <b>Bob</b> & co! Order 42");
        assert_eq!(r.html.unwrap(), "<p>Hello &lt;b&gt;Bob&lt;/b&gt; &amp; co</p>");
    }

    #[test]
    fn refuses_bad_templates() {
        let e = render(&t("Hi {{ name }}", "x", None), &json!({})).err().unwrap();
        assert!(e.detail().contains("undefined"), "{e}");
        for src in
            ["Hi {{ name", "{{ 'x' * 99999999 }}", "{% for i in range(9) %}x{% endfor %}}}", "{{ a..b }}", "{{ }}"]
        {
            let e = check(&t(src, "x", None)).unwrap_err();
            assert!(e.detail().contains("does not parse"), "{src}: {e}");
        }
        let e = render(&t("s", "{{ a }}", None), &json!({"a": {"b": 1}})).err().unwrap();
        assert!(e.detail().contains("not a string"), "{e}");
        // A big value repeated many times stops at the cap instead of growing without bound.
        let many = "{{ a }}".repeat(9000);
        let e = render(&t("s", &many, None), &json!({"a": "x".repeat(1000)})).err().unwrap();
        assert!(e.detail().contains("more than"), "{e}");
        assert!(check_name("Bad Name").is_err());
        assert!(check(&t(" ", "x", None)).is_err());
    }
}
