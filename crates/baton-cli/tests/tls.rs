//! `baton server --tls-cert --tls-key` and the client over https, end to end through the real
//! binary: a CA and a server certificate for 127.0.0.1/localhost are made at test time (rcgen,
//! ring). `--ca-file` (and `BATON_CA_FILE`) make acquire/release work; without them the
//! certificate is refused with a plain message and exit 76; unusable certificate files stop the
//! server before it listens, with exit 64. Every wait is bounded.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails loudly on what it did not expect

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

const BATON: &str = env!("CARGO_BIN_EXE_baton");

/// How long a server may take to start, or a client command to finish (the machine is shared).
const LIMIT: Duration = Duration::from_secs(60);

/// PEM files of a test CA and of a server certificate it signed for 127.0.0.1 and localhost.
struct Pki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    dir: tempfile::TempDir,
}

fn make_pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let dir = tempfile::Builder::new()
        .prefix("baton-tls-")
        .tempdir()
        .unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "baton test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().unwrap();
    let server_params =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    let server_cert = server_params.signed_by(&server_key, &issuer).unwrap();
    let pki = Pki {
        ca: dir.path().join("ca.pem"),
        cert: dir.path().join("server.pem"),
        key: dir.path().join("server.key"),
        dir,
    };
    std::fs::write(&pki.ca, ca_cert.pem()).unwrap();
    std::fs::write(&pki.cert, server_cert.pem()).unwrap();
    std::fs::write(&pki.key, server_key.serialize_pem()).unwrap();
    pki
}

/// A `baton` command without any of baton's variables from the environment.
fn baton(args: &[&str]) -> Command {
    let mut command = Command::new(BATON);
    command
        .args(args)
        .env_remove("BATON_URL")
        .env_remove("BATON_API_KEY")
        .env_remove("BATON_CA_FILE")
        .env_remove("BATON_TLS_CERT")
        .env_remove("BATON_TLS_KEY")
        .env_remove("BATON_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// A running `baton server` (killed on drop) and the URL it announced.
struct Server {
    url: String,
    _child: Child,
}

/// Starts `baton server --listen 127.0.0.1:0 --store memory ARGS…` and waits for its
/// `baton listening on URL` line.
async fn start(args: &[&str]) -> Server {
    let mut all = vec!["server", "--listen", "127.0.0.1:0", "--store", "memory"];
    all.extend_from_slice(args);
    let mut child = baton(&all).spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let url = tokio::time::timeout(LIMIT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(rest) = line.strip_prefix("baton listening on ") {
                return rest.split_whitespace().next().unwrap().to_owned();
            }
        }
        panic!("baton server exited without listening");
    })
    .await
    .expect("baton server did not announce that it listens");
    // Keep draining stderr so the server never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Server { url, _child: child }
}

/// Runs a client command to its end: exit code, stdout, stderr.
async fn run(command: &mut Command) -> (i32, String, String) {
    let output = tokio::time::timeout(LIMIT, command.output())
        .await
        .expect("baton did not exit")
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).trim().to_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn acquire_and_release_over_https_with_the_ca_file() {
    let pki = make_pki();
    let cert = pki.cert.to_str().unwrap();
    let key = pki.key.to_str().unwrap();
    let ca = pki.ca.to_str().unwrap();
    let server = start(&["--tls-cert", cert, "--tls-key", key]).await;
    assert!(
        server.url.starts_with("https://127.0.0.1:"),
        "announced {}",
        server.url
    );
    let by_name = server.url.replace("127.0.0.1", "localhost");
    for url in [server.url.as_str(), by_name.as_str()] {
        let (code, lease, stderr) = run(&mut baton(&[
            "--url",
            url,
            "--ca-file",
            ca,
            "acquire",
            "tls-lock",
            "--no-wait",
        ]))
        .await;
        assert_eq!(code, 0, "acquire over {url}: {stderr}");
        assert!(lease.starts_with("lease_"), "not a lease id: {lease}");
        // The same through the environment.
        let (code, _, stderr) = run(baton(&["release", &lease])
            .env("BATON_URL", url)
            .env("BATON_CA_FILE", ca))
        .await;
        assert_eq!(code, 0, "release over {url}: {stderr}");
    }
    let (code, _, stderr) = run(&mut baton(&[
        "--url",
        &server.url,
        "--ca-file",
        ca,
        "status",
    ]))
    .await;
    assert_eq!(code, 0, "status over https: {stderr}");
}

#[tokio::test]
async fn without_the_ca_the_certificate_is_refused_plainly() {
    let pki = make_pki();
    let cert = pki.cert.to_str().unwrap();
    let key = pki.key.to_str().unwrap();
    let server = start(&["--tls-cert", cert, "--tls-key", key]).await;
    let (code, _, stderr) = run(&mut baton(&[
        "--url",
        &server.url,
        "acquire",
        "tls-lock",
        "--no-wait",
    ]))
    .await;
    assert_eq!(code, 76, "an untrusted certificate: {stderr}");
    assert!(
        stderr.contains("not trusted") && stderr.contains("--ca-file"),
        "no plain certificate message: {stderr}"
    );
    assert!(
        !stderr.contains("Custom {") && !stderr.contains("kind:"),
        "a debug dump: {stderr}"
    );
    // A CA that did not sign the certificate does not help either.
    let other = make_pki();
    let (code, _, stderr) = run(&mut baton(&[
        "--url",
        &server.url,
        "--ca-file",
        other.ca.to_str().unwrap(),
        "status",
    ]))
    .await;
    assert_eq!(code, 76, "a certificate from another CA: {stderr}");
}

/// Issue 11: a self-signed certificate was refused with rustls's variant name
/// ("UnsupportedSignatureAlgorithmForPublicKeyContext") and nothing a user could act on.
#[tokio::test]
async fn a_self_signed_certificate_is_refused_with_what_to_do() {
    use rcgen::{CertificateParams, IsCa, KeyPair};
    let dir = tempfile::Builder::new()
        .prefix("baton-tls-")
        .tempdir()
        .unwrap();
    let key = KeyPair::generate().unwrap();
    // As the README's openssl command makes it: basicConstraints CA:FALSE, ECDSA P-256.
    let mut params =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    params.is_ca = IsCa::ExplicitNoCa;
    let cert = params.self_signed(&key).unwrap();
    let cert_path = dir.path().join("self.pem");
    let key_path = dir.path().join("self.key");
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let server = start(&[
        "--tls-cert",
        cert_path.to_str().unwrap(),
        "--tls-key",
        key_path.to_str().unwrap(),
    ])
    .await;
    let (code, _, stderr) = run(&mut baton(&["--url", &server.url, "status"])).await;
    assert_eq!(code, 76, "an untrusted self-signed certificate: {stderr}");
    assert!(
        stderr.contains("self-signed")
            && stderr.contains("--ca-file")
            && stderr.contains("BATON_CA_FILE"),
        "the message does not say what to do: {stderr}"
    );
    assert!(
        !stderr.contains("UnsupportedSignatureAlgorithm"),
        "a rustls variant name instead of words: {stderr}"
    );
    // Trusting the certificate itself is what the message says to do, and it works.
    let (code, _, stderr) = run(&mut baton(&[
        "--url",
        &server.url,
        "--ca-file",
        cert_path.to_str().unwrap(),
        "status",
    ]))
    .await;
    assert_eq!(
        code, 0,
        "the self-signed certificate given as --ca-file: {stderr}"
    );
}

#[tokio::test]
async fn the_wrong_scheme_fails_and_the_server_keeps_serving() {
    let pki = make_pki();
    let cert = pki.cert.to_str().unwrap();
    let key = pki.key.to_str().unwrap();
    let ca = pki.ca.to_str().unwrap();
    let tls = start(&["--tls-cert", cert, "--tls-key", key]).await;
    let plain_to_tls = tls.url.replace("https://", "http://");
    let (code, _, stderr) = run(&mut baton(&["--url", &plain_to_tls, "status"])).await;
    assert_ne!(code, 0, "plain http to the TLS port succeeded: {stderr}");
    let plain = start(&[]).await;
    let tls_to_plain = plain.url.replace("http://", "https://");
    let (code, _, stderr) = run(&mut baton(&[
        "--url",
        &tls_to_plain,
        "--ca-file",
        ca,
        "status",
    ]))
    .await;
    assert_eq!(code, 76, "https to a plain server: {stderr}");
    assert!(stderr.contains("serving https"), "no hint: {stderr}");
    let (code, _, stderr) = run(&mut baton(&["--url", &tls.url, "--ca-file", ca, "status"])).await;
    assert_eq!(code, 0, "the TLS server stopped serving: {stderr}");
}

#[tokio::test]
async fn unusable_certificate_files_stop_the_server_with_a_usage_error() {
    let pki = make_pki();
    let missing = pki.dir.path().join("missing.pem");
    let cases = [
        (
            missing.to_str().unwrap(),
            pki.key.to_str().unwrap(),
            "cannot read TLS certificate",
        ),
        (
            pki.cert.to_str().unwrap(),
            pki.cert.to_str().unwrap(),
            "no usable private key",
        ),
    ];
    for (cert, key, expected) in cases {
        let (code, _, stderr) = run(&mut baton(&[
            "server",
            "--listen",
            "127.0.0.1:0",
            "--store",
            "memory",
            "--tls-cert",
            cert,
            "--tls-key",
            key,
        ]))
        .await;
        assert_eq!(code, 64, "{cert} / {key}: {stderr}");
        assert!(stderr.contains(expected), "{stderr}");
        assert!(!stderr.contains("listening"), "it listened: {stderr}");
    }
    // A CA file that cannot be read is a usage error of the client.
    let (code, _, stderr) = run(&mut baton(&[
        "--url",
        "https://127.0.0.1:1",
        "--ca-file",
        missing.to_str().unwrap(),
        "status",
    ]))
    .await;
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("cannot read CA file"), "{stderr}");
}
