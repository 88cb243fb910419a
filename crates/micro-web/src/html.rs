//! The layout every page shares, and the small pieces pages are made of.

use super::Page;
use maud::{DOCTYPE, Markup, html};

/// The sections in the navigation: (path, label).
pub(crate) const SECTIONS: &[(&str, &str)] = &[
    ("services", "Services"),
    ("runtime", "Runtime"),
    ("store", "Store"),
    ("db", "Database"),
    ("users", "App users"),
    ("files", "Files"),
    ("apps", "Apps"),
    ("lists", "Lists"),
    ("push", "Push"),
    ("config", "Config"),
    ("events", "Events"),
    ("auth", "Auth"),
    ("health", "Health"),
    ("usage", "Usage"),
    ("team", "Teams"),
    ("plan", "Plan"),
    ("billing", "Billing"),
    ("platform", "Platform"),
    ("network", "Network"),
];

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            meta name="theme-color" content="#1f4f8a";
            title { (title) " · Micro" }
            link rel="stylesheet" href="/assets/app.css";
            link rel="manifest" href="/manifest.webmanifest";
            link rel="icon" href="/assets/icon.svg" type="image/svg+xml";
            script src="/assets/app.js" defer {}
        }
    }
}

/// The hidden CSRF field every changing form carries.
pub(crate) fn csrf(page: &Page) -> Markup {
    html! { input type="hidden" name="_csrf" value=(page.session.csrf); }
}

/// A page with the navigation; `active` is the section it belongs to.
pub(crate) fn layout(page: &Page, title: &str, active: &str, body: Markup) -> Markup {
    let s = &page.session;
    let can_switch = s.admin && s.home == micro_core::namespace::DEFAULT;
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    a.brand href="/" { "Micro" }
                    nav aria-label="Sections" {
                        ul {
                            // The platform's page is for its operators only; teams and
                            // plans are for the people who signed up.
                            @for (path, label) in SECTIONS.iter().filter(|(p, _)| match *p {
                                "platform" | "network" => can_switch,
                                "team" | "plan" => !can_switch,
                                _ => true,
                            }) {
                                li {
                                    @if *path == active {
                                        a href={ "/" (path) } aria-current="page" { (label) }
                                    } @else {
                                        a href={ "/" (path) } { (label) }
                                    }
                                }
                            }
                        }
                    }
                    div.who {
                        @if can_switch {
                            form.inline method="post" action="/namespace" {
                                (csrf(page))
                                label for="ns-switch" { "Namespace" }
                                input #ns-switch name="namespace" value=(s.namespace) size="12" required pattern="[a-z0-9][a-z0-9\\-]*";
                                button type="submit" { "Switch" }
                            }
                        } @else {
                            span.ns title="Namespace" { (s.namespace) }
                        }
                        @if let Some(own) = &s.away_from {
                            form.inline method="post" action="/team" {
                                (csrf(page))
                                input type="hidden" name="action" value="home";
                                button type="submit" { "Back to " (own.namespace) }
                            }
                        }
                        span.account { (s.account) }
                        form.inline method="post" action="/logout" {
                            (csrf(page))
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main #main {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

/// A page with a title and a sentence (not found, forbidden, …).
pub(crate) fn message(page: &Page, title: &str, detail: &str) -> Markup {
    layout(page, title, "", html! { p { (detail) } })
}

/// A page without a session.
pub(crate) fn bare(title: &str, detail: &str) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body.narrow {
                main #main {
                    h1 { (title) }
                    p { (detail) }
                    p { a href="/login" { "Sign in" } }
                }
            }
        }
    }
}

/// The sign-in page.
pub(crate) fn login(token: &str, namespace: &str, error: Option<&str>) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head("Sign in"))
            body.narrow {
                main #main {
                    h1 { "Sign in to Micro" }
                    @if let Some(e) = error {
                        p.error role="alert" { (e) }
                    }
                    form.stack method="post" action="/login" {
                        input type="hidden" name="_csrf" value=(token);
                        label for="namespace" { "Namespace" }
                        input #namespace name="namespace" value=(namespace) required autocomplete="organization";
                        label for="id" { "Account" }
                        input #id name="id" required autocomplete="username" autofocus;
                        label for="secret" { "Secret" }
                        input #secret name="secret" type="password" required autocomplete="current-password";
                        button type="submit" { "Sign in" }
                    }
                    p.hint { "The same accounts as " code { "micro login" } "." }
                }
            }
        }
    }
}

/// A call's error, in words.
pub(crate) fn error(status: &micro_core::Status) -> Markup {
    html! {
        div.error role="alert" {
            strong { (status.http_status()) " " (micro_core::reason(status.http_status())) }
            " — " (status.detail())
        }
    }
}

/// Why a page only the namespace's admins may see was refused: for an account without
/// the admin scope, a 403 that says what the admins may do (`what`: "see its usage") and
/// who the account is; for a token no longer accepted, a way to sign in again; otherwise
/// the error.
pub(crate) fn refused(page: &Page, e: &micro_core::Status, what: &str) -> Markup {
    let s = &page.session;
    html! {
        @match e.code() {
            micro_core::Code::PermissionDenied => {
                div.error role="alert" {
                    strong { "403 Forbidden" } " — only an admin of namespace " code { (s.namespace) } " can " (what) "."
                }
                p {
                    "You are signed in as " strong { (s.account) } " of " code { (s.home) }
                    ", which does not hold the " code { "admin" } " scope here. Ask an admin, or sign in as one."
                }
            }
            micro_core::Code::Unauthenticated => {
                (error(e))
                p { "Your sign-in is no longer accepted. " a href="/login" { "Sign in again" } "." }
            }
            _ => { (error(e)) }
        }
    }
}

/// JSON, pretty-printed.
pub(crate) fn json(value: &serde_json::Value) -> Markup {
    let text = serde_json::to_string_pretty(value).unwrap_or_default();
    html! { pre.json { code { (text) } } }
}

/// Bytes in binary units: `512 B`, `1.5 KiB`, `12.3 MiB`, `2.0 GiB`.
pub(crate) fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}
