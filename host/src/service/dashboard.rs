//! The dashboard: a page (`/`) and its script, stylesheet and icon (`/assets/NAME`), compiled into the binary, that
//! shows agents, recent runs, a fuel chart, a live event timeline, a run's detail and a form to submit a run, all
//! through the same `/v1` API with the bearer token a person pastes (kept in the tab's session storage).
//!
//! These files hold no data and so need no token: the data comes from the API, which checks the token on every
//! request. Every answer carries a strict Content-Security-Policy (only the page's own script and stylesheet, requests
//! only to this origin, no framing, no form submission), so that a guest's words that reach the page through an event
//! payload can never run as script even if a future change inserted them as markup. This module must never serve a
//! file from disk or a name it does not list: the set of assets is fixed at compile time.

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// What the page may load and where it may connect: its own files and this origin's API, nothing else.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const INDEX: &str = include_str!("dashboard/index.html");

/// The assets under `/assets/`: name, content type, bytes.
const ASSETS: &[(&str, &str, &str)] = &[
    ("dashboard.js", "text/javascript; charset=utf-8", include_str!("dashboard/dashboard.js")),
    ("dashboard.css", "text/css; charset=utf-8", include_str!("dashboard/dashboard.css")),
    ("favicon.svg", "image/svg+xml", include_str!("dashboard/favicon.svg")),
];

/// The dashboard's routes (they need no state).
pub fn routes<S: Clone + Send + Sync + 'static>() -> axum::Router<S> {
    axum::Router::new()
        .route("/", axum::routing::get(index))
        .route("/favicon.ico", axum::routing::get(favicon))
        .route("/assets/{name}", axum::routing::get(asset))
}

async fn index() -> Response {
    page("text/html; charset=utf-8", INDEX)
}

async fn favicon() -> Response {
    lookup("favicon.svg")
}

async fn asset(Path(name): Path<String>) -> Response {
    lookup(&name)
}

/// The asset named `name`, or a JSON 404 like any unknown route.
pub fn lookup(name: &str) -> Response {
    match ASSETS.iter().find(|(n, _, _)| *n == name) {
        Some((_, content_type, body)) => page(content_type, body),
        None => super::error::ApiError::not_found("no such asset").into_response(),
    }
}

fn page(content_type: &'static str, body: &'static str) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    // The files change with the binary: a browser revalidates rather than keeping an old script.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_files() -> Vec<(&'static str, &'static str)> {
        let mut files = vec![("index.html", INDEX)];
        files.extend(ASSETS.iter().map(|(n, _, b)| (*n, *b)));
        files
    }

    #[test]
    fn every_asset_has_its_content_type_and_the_policy() {
        for (name, content_type, _) in ASSETS {
            let r = lookup(name);
            assert_eq!(r.status(), StatusCode::OK, "{name}");
            assert_eq!(r.headers()[header::CONTENT_TYPE], *content_type, "{name}");
            assert_eq!(r.headers()[header::CONTENT_SECURITY_POLICY], CONTENT_SECURITY_POLICY, "{name}");
            assert_eq!(r.headers()[header::X_CONTENT_TYPE_OPTIONS], "nosniff", "{name}");
        }
        // Only listed names: no path, no other file, no near miss.
        for name in ["index.html", "../Cargo.toml", "dashboard.js.map", "DASHBOARD.JS", "", "dashboard.rs"] {
            assert_eq!(lookup(name).status(), StatusCode::NOT_FOUND, "{name:?}");
        }
    }

    /// The policy allows no inline script or style: the page must not need any, or it would break in the browser.
    #[test]
    fn the_page_needs_nothing_the_policy_forbids() {
        let lower = INDEX.to_ascii_lowercase();
        for tag in lower.match_indices("<script").map(|(i, _)| &lower[i..]) {
            let open = &tag[..tag.find('>').unwrap_or(tag.len())];
            assert!(open.contains("src=\"/assets/"), "an inline or foreign script: {open}");
        }
        assert!(!lower.contains("<style"), "an inline stylesheet");
        assert!(!lower.contains(" style="), "an inline style attribute");
        assert!(!lower.contains("javascript:"), "a javascript: URL");
        for handler in [" onclick=", " onload=", " onerror=", " onsubmit=", " oninput=", " onchange="] {
            assert!(!lower.contains(handler), "an inline event handler {handler}");
        }
        for needle in ["http://", "https://", "//cdn", "@import"] {
            for (name, body) in all_files() {
                // The SVG namespace is a name, not a fetch.
                let body = body.replace("http://www.w3.org/2000/svg", "");
                assert!(!body.contains(needle), "{name} refers to {needle}: the page loads nothing from elsewhere");
            }
        }
    }

    /// Server data (guests' words among it) goes into the page as text only.
    #[test]
    fn the_script_never_inserts_markup() {
        let js = ASSETS.iter().find(|(n, _, _)| *n == "dashboard.js").map(|(_, _, b)| *b).unwrap_or_default();
        for sink in ["innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function", "srcdoc"]
        {
            assert!(!js.contains(sink), "dashboard.js uses {sink}");
        }
        assert!(js.contains("textContent"), "the check above looks at the right file");
    }
}
