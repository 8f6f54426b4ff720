//! The backing services over TLS, with credentials: Redis as an ACL user over
//! `rediss://` (a real redis-server with TLS), RabbitMQ over `amqps://` (the real broker
//! behind a TLS terminator, as a load balancer would front it). Each time an ingress
//! process that trusts the test's own CA (`SSL_CERT_FILE`) must become ready, which it
//! only is once every service answered it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::support::{Platform, WAIT};

/// A directory with a CA (`ca.crt`) and a server certificate for `localhost` signed by it
/// (`server.crt`, `server.key`), removed on drop.
struct Certificates {
    dir: PathBuf,
}

impl Certificates {
    fn make(id: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("cf-tls-{id}"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let openssl = |args: &[&str]| {
            let out = std::process::Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .output()
                .expect("openssl runs");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let subject = |cn: &str| format!("/CN={cn}");
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            &subject("chatfleet test CA"),
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
        ]);
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            &subject("localhost"),
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ]);
        std::fs::write(
            dir.join("san.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
        )
        .expect("extension file");
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "san.ext",
            "-out",
            "server.crt",
        ]);
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for Certificates {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Whether a `chatfleet ingress` process on the platform's settings, with `vars` on top
/// and trusting `ca`, becomes ready within [`WAIT`]; it is stopped either way.
async fn ingress_becomes_ready(p: &Platform, ca: &Path, vars: &[(&str, String)]) -> bool {
    let port = free_port();
    let mut command = p.env.command(env!("CARGO_BIN_EXE_chatfleet"));
    command
        .arg("ingress")
        .env("CHATFLEET__HTTP__BIND", format!("127.0.0.1:{port}"))
        .env("SSL_CERT_FILE", ca)
        .stdout(std::process::Stdio::null());
    for (k, v) in vars {
        command.env(k, v);
    }
    let mut ingress = command.spawn().expect("ingress starts");
    let ready = tokio::time::timeout(WAIT, async {
        loop {
            let answer = p
                .http
                .get(format!("http://127.0.0.1:{port}/readyz"))
                .send()
                .await;
            if answer.is_ok_and(|r| r.status() == StatusCode::OK) {
                return true;
            }
            if ingress.try_wait().ok().flatten().is_some() {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .unwrap_or(false);
    let _ = ingress.kill();
    let _ = ingress.wait();
    ready
}

#[tokio::test]
async fn redis_over_tls_as_an_acl_user() {
    let p = Platform::start().await;
    let certs = Certificates::make(&p.env.id);
    let port = free_port();
    let mut redis = std::process::Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .args([
            "--tls-cert-file",
            "server.crt",
            "--tls-key-file",
            "server.key",
        ])
        .args(["--tls-ca-cert-file", "ca.crt", "--tls-auth-clients", "no"])
        .args(["--save", "", "--appendonly", "no"])
        .args(["--user", "default", "off"])
        .args([
            "--user",
            "chatfleet",
            "on",
            ">pw-of-ours",
            "~*",
            "&*",
            "+@all",
        ])
        .current_dir(&certs.dir)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server starts");
    let url = |password: &str| format!("rediss://chatfleet:{password}@localhost:{port}");
    let right = ingress_becomes_ready(
        &p,
        &certs.path("ca.crt"),
        &[("CHATFLEET__REDIS__URL", url("pw-of-ours"))],
    )
    .await;
    let wrong = ingress_becomes_ready(
        &p,
        &certs.path("ca.crt"),
        &[("CHATFLEET__REDIS__URL", url("guess"))],
    )
    .await;
    let _ = redis.kill();
    let _ = redis.wait();
    assert!(right, "ready over rediss:// as the ACL user");
    assert!(!wrong, "a wrong password is refused");
    p.stop().await;
}

#[tokio::test]
async fn the_broker_over_amqps() {
    let p = Platform::start().await;
    let certs = Certificates::make(&p.env.id);
    let chain = CertificateDer::pem_file_iter(certs.path("server.crt"))
        .expect("certificate")
        .collect::<Result<Vec<_>, _>>()
        .expect("pem");
    let key = PrivateKeyDer::from_pem_file(certs.path("server.key")).expect("key");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    // A TLS terminator in front of the real broker.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let terminator = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut broker) = tokio::net::TcpStream::connect("127.0.0.1:5672").await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut broker).await;
            });
        }
    });
    let plain = p.env.settings.amqp.url.expose().clone();
    let tls = plain.replacen("amqp://", "amqps://", 1).replacen(
        "127.0.0.1:5672",
        &format!("localhost:{port}"),
        1,
    );
    assert_ne!(tls, plain, "the broker URL was rewritten");
    let ready =
        ingress_becomes_ready(&p, &certs.path("ca.crt"), &[("CHATFLEET__AMQP__URL", tls)]).await;
    terminator.abort();
    assert!(ready, "ready over amqps://");
    p.stop().await;
}
