//! Loading serving certificates: every bad file is named, and a reload that fails keeps
//! the old certificate.

use podvault_certs::{Reloader, load};
use rcgen::{CertificateParams, KeyPair};

fn pair() -> (String, String) {
    let key = KeyPair::generate().expect("key");
    let cert = CertificateParams::new(vec!["localhost".to_string()])
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    (cert.pem(), key.serialize_pem())
}

#[test]
fn bad_files_are_named_and_a_failed_reload_keeps_serving() {
    let dir = tempfile::tempdir().expect("tmp");
    let (crt, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let err = load(&crt, &key).expect_err("missing");
    assert!(err.to_string().contains("tls.crt"), "{err}");

    let (cert_pem, key_pem) = pair();
    std::fs::write(&crt, "not a certificate").expect("w");
    std::fs::write(&key, &key_pem).expect("w");
    let err = load(&crt, &key).expect_err("no PEM");
    assert!(err.to_string().contains("holds no certificate"), "{err}");
    std::fs::write(&crt, &cert_pem).expect("w");
    std::fs::write(
        &key,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .expect("w");
    let err = load(&crt, &key).expect_err("bad key");
    assert!(err.to_string().contains("tls.key"), "{err}");

    std::fs::write(&key, &key_pem).expect("w");
    let reloader = Reloader::new(&crt, &key).expect("load");
    let before = reloader.current();
    assert!(
        !reloader.reload().expect("unchanged"),
        "same files: no swap"
    );
    let (_, other_key) = pair();
    std::fs::write(&key, other_key).expect("w");
    let err = reloader.reload().expect_err("mismatched");
    assert!(
        err.to_string().contains("does not match the certificate"),
        "{err}"
    );
    assert!(
        std::sync::Arc::ptr_eq(&before, &reloader.current()),
        "old one kept"
    );
    let (cert2, key2) = pair();
    std::fs::write(&crt, cert2).expect("w");
    std::fs::write(&key, key2).expect("w");
    assert!(reloader.reload().expect("new pair"));
    assert!(!std::sync::Arc::ptr_eq(&before, &reloader.current()));
}
