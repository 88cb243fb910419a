//! Templates: a subject, a text body and an optional HTML body, with `{{ variables }}`
//! (Jinja syntax). Values are escaped in the HTML body and never in the text; a variable
//! the call does not give is an error, not an empty string; a template runs on a fuel
//! budget, so a loop cannot hold the service.

use crate::NAME;
use micro::Status;
use minijinja::{Environment, UndefinedBehavior};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The largest part of a template, in bytes.
pub(crate) const MAX_PART: usize = 64 * 1024;
/// The longest subject, in characters (RFC 5322's line limit).
pub(crate) const MAX_SUBJECT: usize = 998;
/// How much work one rendering may do.
const FUEL: u64 = 200_000;

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
    if name.is_empty()
        || name.len() > 64
        || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    {
        return Err(bad(format!("invalid template name {name:?}: use 1 to 64 of a-z, 0-9, '-' and '_'")));
    }
    Ok(())
}

fn env() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_fuel(Some(FUEL));
    // Escaping by the part's name: `.html` escapes, `.txt` does not.
    env.set_auto_escape_callback(|name| {
        if name.ends_with(".html") { minijinja::AutoEscape::Html } else { minijinja::AutoEscape::None }
    });
    env
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
        let mut env = env();
        env.add_template_owned(format!("{part}.check"), src.clone())
            .map_err(|e| bad(format!("the template's {part} does not parse: {e}")))?;
    }
    Ok(())
}

/// Renders `t` with `vars` (a JSON object).
pub(crate) fn render(t: &Template, vars: &serde_json::Value) -> Result<Rendered, Status> {
    let env = env();
    let run = |part: &str, name: &str, src: &str| {
        env.render_named_str(name, src, vars).map_err(|e| bad(format!("template {:?}, {part}: {e}", t.name)))
    };
    Ok(Rendered {
        subject: run("subject", "subject.txt", &t.subject)?,
        text: run("text", "body.txt", &t.text)?,
        html: t.html.as_deref().map(|h| run("html", "body.html", h)).transpose()?,
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
            &t("Hi {{ name }}", "Hello {{ name }}!", Some("<p>Hello {{ name }}</p>")),
            &json!({"name": "<b>Bob</b> & co"}),
        )
        .unwrap();
        assert_eq!(r.subject, "Hi <b>Bob</b> & co");
        assert_eq!(r.text, "Hello <b>Bob</b> & co!");
        assert_eq!(r.html.unwrap(), "<p>Hello &lt;b&gt;Bob&lt;&#x2f;b&gt; &amp; co</p>");
    }

    #[test]
    fn refuses_bad_templates() {
        let e = render(&t("Hi {{ name }}", "x", None), &json!({})).err().unwrap();
        assert!(e.detail().contains("undefined"), "{e}");
        let e = check(&t("Hi {{ name", "x", None)).unwrap_err();
        assert!(e.detail().contains("does not parse"), "{e}");
        let e = render(
            &t("s", "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}", None),
            &json!({}),
        )
        .err()
        .unwrap();
        assert!(e.detail().contains("fuel"), "a runaway loop is stopped: {e}");
        assert!(check_name("Bad Name").is_err());
        assert!(check(&t(" ", "x", None)).is_err());
    }
}
