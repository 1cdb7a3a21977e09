//! `vessel pull` from a registry that wants a bearer token: docker-registry with
//! `auth: token`, and a small token service (this test) that hands out an RS256
//! JWT signed with openssl, only to clients that present the right basic credentials.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};

use common::{skip_without, Registry, TestImage, TestRoot};

const USER: &str = "bob";
const PASSWORD: &str = "builder";
const SERVICE: &str = "vessel-test-service";
const ISSUER: &str = "vessel-test-issuer";
const REPO: &str = "vessel-test/token";

fn b64(data: &[u8], url: bool) -> String {
    let table: &[u8] = if url {
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    } else {
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    };
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = (chunk[0] as u32) << 16
            | (*chunk.get(1).unwrap_or(&0) as u32) << 8
            | *chunk.get(2).unwrap_or(&0) as u32;
        for i in 0..=chunk.len() {
            out.push(table[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
        if !url {
            for _ in chunk.len()..3 {
                out.push('=');
            }
        }
    }
    out
}

fn openssl(args: &[&str], dir: &Path) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stderr(Stdio::piped())
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A JWT the registry accepts: RS256, the signing certificate in `x5c`.
fn make_token(dir: &Path) -> String {
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "key.pem",
            "-out",
            "cert.pem",
            "-days",
            "2",
            "-subj",
            "/CN=vessel-test-token",
        ],
        dir,
    );
    let der = openssl(&["x509", "-in", "cert.pem", "-outform", "DER"], dir);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [b64(&der, false)]});
    let claims = serde_json::json!({
        "iss": ISSUER, "sub": USER, "aud": SERVICE,
        "exp": now + 3600, "nbf": now - 60, "iat": now - 60, "jti": "vessel-test-1",
        "access": [{"type": "repository", "name": REPO, "actions": ["pull", "push"]}],
    });
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes(), true),
        b64(claims.to_string().as_bytes(), true)
    );
    std::fs::write(dir.join("input"), &input).unwrap();
    let sig = openssl(&["dgst", "-sha256", "-sign", "key.pem", "input"], dir);
    format!("{input}.{}", b64(&sig, true))
}

/// Serves the token to requests carrying our basic credentials, 401 to the rest.
fn token_service(token: String) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let issued = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = issued.clone();
    let expected = format!(
        "authorization: basic {}",
        b64(format!("{USER}:{PASSWORD}").as_bytes(), false).to_lowercase()
    );
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut authorized = false;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if line.trim().to_lowercase() == expected {
                    authorized = true;
                }
            }
            let (status, body) = if authorized {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                (
                    "200 OK",
                    serde_json::json!({"token": token, "access_token": token, "expires_in": 3600})
                        .to_string(),
                )
            } else {
                (
                    "401 Unauthorized",
                    r#"{"details":"bad credentials"}"#.to_string(),
                )
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (addr, issued)
}

#[test]
fn pull_with_a_bearer_token() {
    if skip_without(&["openssl"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let token = make_token(dir.path());
    let (token_addr, issued) = token_service(token);
    let auth = format!(
        "auth:\n  token:\n    realm: http://{token_addr}/token\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
        dir.path().join("cert.pem").display()
    );
    let Some(reg) = Registry::start_with_auth_config(&auth, Some((USER.into(), PASSWORD.into())))
    else {
        return;
    };
    let img = TestImage::new("vessel-test/token:1").label("via", "token");
    let w = reg.push_image(&img, &format!("{REPO}:1"));
    let r = reg.reference(&format!("{REPO}:1"));
    let root = TestRoot::new();
    let none = dir.path().join("no-credentials.json");

    // Anonymous: the token service refuses, so the pull fails.
    let err = root.fails(&["pull", "--authfile", none.to_str().unwrap(), &r]);
    assert!(err.contains(&reg.addr), "{err}");
    assert!(
        err.contains("authenticating") || err.to_lowercase().contains("not authorized"),
        "{err}"
    );
    assert_eq!(root.ok(&["images", "-q"]).trim(), "");

    let before = issued.load(std::sync::atomic::Ordering::SeqCst);
    let mut child = root
        .cmd()
        .args(["pull", "-q", "-u", USER, "--password-stdin", &r])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(PASSWORD.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), w.config_digest);
    assert!(
        issued.load(std::sync::atomic::Ordering::SeqCst) > before,
        "vessel obtained a token"
    );
}
