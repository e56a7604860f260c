//! Router-level checks over a real socket on 127.0.0.1:0, against the in-memory store.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly on what it did not expect

use std::sync::Arc;

use baton_server::{ServerConfig, StoreKind};

async fn start() -> (String, tokio::sync::oneshot::Sender<()>) {
    // reqwest is built with rustls and no provider of its own (see the root Cargo.toml).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let mut config = ServerConfig::new(address, std::env::temp_dir());
    config.store = StoreKind::Memory;
    let store = baton_server::open_store(&config).await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = baton_server::run(listener, Arc::clone(&store), &config, async move {
            let _ = stopped.await;
        })
        .await;
    });
    (format!("http://{address}"), stop)
}

async fn call(method: &str, url: &str, body: Option<&str>) -> (u16, serde_json::Value) {
    let client = reqwest::Client::new();
    let mut request = client.request(method.parse().unwrap(), url);
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_owned());
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    )
}

#[tokio::test]
async fn acquire_release_round_trip() {
    let (base, _stop) = start().await;
    let (status, body) = call(
        "POST",
        &format!("{base}/v1/locks/team-a%2Fdeploy/acquire"),
        Some(r#"{"owner":"me"}"#),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let id = body["lease"]["id"].as_str().unwrap().to_owned();
    assert_eq!(body["lease"]["lock"], "team-a/deploy");
    let (status, body) = call(
        "POST",
        &format!("{base}/v1/locks/team-a%2Fdeploy/acquire"),
        Some(r#"{"owner":"other"}"#),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "busy");
    assert_eq!(body["holders"][0]["owner"], "me");
    let (status, body) = call("GET", &format!("{base}/v1/locks"), None).await;
    assert_eq!(status, 200);
    assert!(
        !body.to_string().contains(&id),
        "listings must not show lease ids"
    );
    let (status, body) = call("POST", &format!("{base}/v1/leases/{id}/release"), None).await;
    assert_eq!(
        (status, body["released"].clone()),
        (200, serde_json::Value::Bool(true))
    );
    let (status, body) = call("GET", &format!("{base}/v1/openapi.json"), None).await;
    assert_eq!(status, 200);
    assert!(body["paths"]["/v1/locks/{name}/acquire"].is_object());
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("baton_transitions_total{store=\"memory\"}"),
        "{text}"
    );
    assert!(text.contains("baton_locks{store=\"memory\"} 1"), "{text}");
}

/// Regression: a 413 for an oversized body left the unread body in a keep-alive connection the
/// server then dropped, and the client's next request on it failed ("error sending request").
/// The 413 now says `Connection: close`, so the client opens a fresh connection.
#[tokio::test]
async fn an_oversized_body_closes_the_connection_and_the_next_request_works() {
    let (base, _stop) = start().await;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()
        .unwrap();
    let huge = format!("{{\"owner\":\"{}\"}}", "x".repeat(64 * 1024));
    let response = client
        .post(format!("{base}/v1/locks/big/acquire"))
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 413);
    assert_eq!(
        response
            .headers()
            .get("connection")
            .and_then(|v| v.to_str().ok()),
        Some("close")
    );
    let _ = response.text().await;
    for _ in 0..5 {
        let response = client
            .post(format!("{base}/v1/locks/big/acquire"))
            .header("content-type", "application/json")
            .body(r#"{"owner":"me","owner_key":"k"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
    }
}
