//! The dashboard: one HTML page and its script, style sheet and icon, compiled into the binary
//! (`src/dashboard/`) and served at `/` and `/dashboard/…`, so it works with no internet and
//! needs nothing beside the `baton` binary (docs/dashboard.md).
//!
//! The page holds no data. Everything it shows it reads in the browser from the public, keyed
//! API (`/v1/locks`, `/v1/jobs`, `/v1/events`, `/readyz`, `/metrics`) with the key the user
//! typed, so it shows exactly what that key may read. That is why its files are open: they
//! need no key (a browser cannot send one for the page itself), and authentication lets
//! [`is_page_path`] through while a server without keys still answers them only for allowed
//! `Host` names (`auth::authenticate`), as it does the API.
//!
//! **Security headers.** Every file is sent with a Content-Security-Policy that allows only
//! this origin's script, style, images and connections and no inline script or style at all,
//! so text from the API (lock names, owners, job output) can never run as code even if the
//! script had a bug; the script also builds the page with `textContent`, never HTML strings.
//! `nosniff`, `no-referrer` and `frame-ancestors 'none'` (no clickjacking of a page that can
//! revoke leases one day) go with it.
//!
//! The files are not in the OpenAPI document: they are not part of the API (no JSON, no
//! parameters), and `tests/auth.rs` checks them on their own.

use std::sync::OnceLock;

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};

/// One file of the dashboard.
struct Asset {
    /// The path it is served at.
    path: &'static str,
    /// Its `Content-Type`.
    content_type: &'static str,
    /// Its bytes, compiled in.
    body: &'static [u8],
}

/// Every file of the dashboard. The page is at `/`; its hash routes (`#/locks/NAME`,
/// `#/jobs/ID`) never reach the server, so there is nothing else to serve.
const ASSETS: &[Asset] = &[
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("dashboard/index.html"),
    },
    Asset {
        path: "/dashboard/app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("dashboard/app.js"),
    },
    Asset {
        path: "/dashboard/style.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("dashboard/style.css"),
    },
    Asset {
        path: "/dashboard/favicon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("dashboard/favicon.svg"),
    },
];

/// What the page may load: its own origin's files and API, nothing inline, nothing else. The
/// API's event stream is read with `fetch` (an `EventSource` cannot send the key), so
/// `connect-src 'self'` covers it.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// Whether `path` is one of the dashboard's files (open: they hold no data).
pub fn is_page_path(path: &str) -> bool {
    ASSETS.iter().any(|asset| asset.path == path)
}

/// The dashboard's routes, added to the API's router.
pub(crate) fn routes<S: Clone + Send + Sync + 'static>(router: axum::Router<S>) -> axum::Router<S> {
    ASSETS.iter().fold(router, |router, asset| {
        router.route(
            asset.path,
            get(move |request: Request| serve(asset, request)),
        )
    })
}

/// A strong validator of the file's bytes, so a browser revalidates (the binary may have been
/// upgraded) and gets `304` when nothing changed.
fn etag(asset: &Asset) -> &'static str {
    static ETAGS: OnceLock<Vec<String>> = OnceLock::new();
    let etags = ETAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|asset| {
                let digest = Sha256::digest(asset.body);
                let hex: String = digest[..12]
                    .iter()
                    .map(|byte| format!("{byte:02x}"))
                    .collect();
                format!("\"{hex}\"")
            })
            .collect()
    });
    ASSETS
        .iter()
        .position(|known| known.path == asset.path)
        .and_then(|index| etags.get(index))
        .map_or("\"\"", String::as_str)
}

async fn serve(asset: &'static Asset, request: Request) -> Response {
    let etag = etag(asset);
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // Revalidate every time: the files change with the binary, and a 304 costs one round trip.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(value) = HeaderValue::from_str(etag) {
        headers.insert(header::ETAG, value);
    }
    let unchanged = request
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.split(',').any(|tag| tag.trim() == etag));
    if unchanged {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    (StatusCode::OK, headers, asset.body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_is_a_page_path_and_nothing_else_is() {
        for asset in ASSETS {
            assert!(is_page_path(asset.path), "{}", asset.path);
            assert!(!asset.body.is_empty(), "{} is empty", asset.path);
        }
        for path in [
            "/v1/locks",
            "/dashboard/",
            "/dashboard/x.js",
            "/index.html",
            "",
        ] {
            assert!(!is_page_path(path), "{path}");
        }
    }

    #[test]
    fn the_page_loads_only_its_own_files_and_has_no_inline_code() {
        let page = std::str::from_utf8(ASSETS[0].body).unwrap_or_default();
        assert!(page.contains("src=\"/dashboard/app.js\""));
        assert!(page.contains("href=\"/dashboard/style.css\""));
        // Nothing the policy would refuse: no inline script or style, no outside URL.
        for refused in [
            "<script>",
            "style=",
            "<style",
            "http://",
            "https://",
            "javascript:",
        ] {
            assert!(!page.contains(refused), "the page contains {refused:?}");
        }
        assert!(!CONTENT_SECURITY_POLICY.contains("unsafe"));
    }
}
