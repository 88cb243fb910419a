//! The pages a subscriber sees: the form (an iframe's, or drawn by the script tag), the
//! confirmation and unsubscribe pages the mails link to (a button: following a link
//! changes nothing), and the answers.

use super::List;
use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::Full;
use micro::web::Body;
use micro_core::Status;

use micro::web::escape_html as esc;

fn title(list: &List) -> &str {
    if list.title.is_empty() { &list.name } else { &list.title }
}

const STYLE: &str = "body{font:16px/1.5 system-ui,sans-serif;max-width:32rem;margin:2rem auto;padding:0 1rem;color:#1d2430}\
button{font:inherit;padding:.5rem 1rem;background:#1f4f8a;color:#fff;border:0;border-radius:4px;cursor:pointer}\
input{font:inherit;padding:.4rem;width:100%;box-sizing:border-box;margin:.2rem 0 .8rem}.error{color:#a11}";

fn html(status: StatusCode, body: String) -> Response<Body> {
    let mut res = Response::new(Body::new(Full::new(Bytes::from(body))));
    *res.status_mut() = status;
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    // The pages run no script and submit only to where they came from.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; form-action 'self'"),
    );
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    res
}

fn document(heading: &str, inner: &str) -> String {
    format!(
        "<!doctype html><html lang=en><head><meta charset=utf-8><meta name=viewport content=\"width=device-width, initial-scale=1\"><title>{h}</title><style>{STYLE}</style></head><body><main><h1>{h}</h1>{inner}</main></body></html>",
        h = esc(heading)
    )
}

/// A page saying `message` about `list`.
pub(crate) fn page(status: StatusCode, list: &List, message: &str, extra: Option<&str>) -> Response<Body> {
    let inner = format!("<p role=status>{}</p>{}", esc(message), extra.unwrap_or(""));
    html(status, document(title(list), &inner))
}

/// An error as a page (for a browser that followed a link).
pub(crate) fn error_page(e: &Status) -> Response<Body> {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
    html(status, document("Something is wrong", &format!("<p class=error role=alert>{}</p>", esc(e.detail()))))
}

/// The page of a confirmation or unsubscribe link: what it does, and the button that does it.
pub(crate) fn ask(list: &List, what: &str, address: &str, path: &str, query: &str) -> Response<Body> {
    let (text, button) = match what {
        "confirm" => (format!("Subscribe {address} to {}?", title(list)), "Confirm my subscription"),
        _ => (format!("Unsubscribe {address} from {}?", title(list)), "Unsubscribe"),
    };
    let inner = format!(
        "<p>{}</p><form method=post action=\"{}?{}\"><button type=submit>{button}</button></form>",
        esc(&text),
        esc(path),
        esc(query)
    );
    html(StatusCode::OK, document(title(list), &inner))
}

/// The form of a list, for an iframe: a plain form post, answered with a page.
pub(crate) fn form(ns: &str, list: &List) -> Response<Body> {
    let inner = format!(
        "<form method=post action=\"/subscribe/v1/{}/lists/{}/subscribe\" enctype=application/x-www-form-urlencoded>\
         <label for=email>Email</label><input id=email name=email type=email required autocomplete=email>\
         <label for=name>Name (optional)</label><input id=name name=name autocomplete=name maxlength=100>\
         <button type=submit>Subscribe</button></form>",
        esc(ns),
        esc(&list.name)
    );
    let mut res = html(StatusCode::OK, document(title(list), &inner));
    // Framed by any site (that is what it is for).
    res.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors *",
        ),
    );
    res
}

/// The script tag's script: draws the form where it is, posts it (a simple request: no
/// preflight) and shows the answer in place.
pub(crate) fn script(ns: &str, list: &List) -> Response<Body> {
    let js = format!(
        r#"(function () {{
  var me = document.currentScript;
  var api = new URL(me.src).origin;
  var form = document.createElement('form');
  form.className = 'micro-subscribe';
  form.innerHTML = '<input type="email" name="email" required placeholder="you@example.com" aria-label="Email"> '
    + '<button type="submit">Subscribe</button> <span role="status"></span>';
  me.parentNode.insertBefore(form, me.nextSibling);
  form.addEventListener('submit', function (e) {{
    e.preventDefault();
    var status = form.querySelector('[role=status]');
    status.textContent = '…';
    fetch(api + '/subscribe/v1/{ns}/lists/{list}/subscribe', {{
      method: 'POST',
      headers: {{ 'Content-Type': 'application/x-www-form-urlencoded' }},
      body: new URLSearchParams({{ email: form.email.value }}),
      credentials: 'omit'
    }}).then(function (r) {{ return r.json(); }}).then(function (v) {{
      status.textContent = v.message || v.detail || 'Something went wrong';
    }}, function () {{ status.textContent = 'Something went wrong: try again'; }});
  }});
}})();
"#,
        ns = ns,
        list = list.name
    );
    let mut res = Response::new(Body::new(Full::new(Bytes::from(js))));
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/javascript; charset=utf-8"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=300"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(http::HeaderName::from_static("cross-origin-resource-policy"), HeaderValue::from_static("cross-origin"));
    res
}
