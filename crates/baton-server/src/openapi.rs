//! The OpenAPI document, generated from the handlers' annotations and the wire types.

use std::sync::OnceLock;

use utoipa::OpenApi;

/// The document as JSON text, built once.
pub fn document_json() -> String {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    DOCUMENT
        .get_or_init(|| {
            let mut document = crate::routes::ApiDoc::openapi();
            document.info.version = env!("CARGO_PKG_VERSION").to_owned();
            document.to_json().unwrap_or_else(|error| {
                format!("{{\"error\":{{\"code\":\"internal\",\"message\":\"{error}\"}}}}")
            })
        })
        .clone()
}
