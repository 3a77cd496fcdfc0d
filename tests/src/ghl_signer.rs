//! Test keys that sign HighLevel webhook deliveries the way GHL does: Ed25519 (`x-ghl-signature`)
//! and the legacy RSA-SHA256 PKCS#1 v1.5 (`x-wh-signature`), each base64 over the raw body.
//! Keys are generated fresh (never a real key); the public halves go to the intake as
//! `GHL_WEBHOOK_ED25519_KEYS` and `GHL_WEBHOOK_RSA_KEYS` (base64 DER SubjectPublicKeyInfo).

use std::sync::Arc;

use aws_lc_rs::encoding::{AsDer, PublicKeyX509Der};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair, RSA_PKCS1_SHA256, RsaKeyPair};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

/// A signing key pair of each kind.
#[derive(Clone)]
pub struct GhlSigner {
    ed25519: Arc<Ed25519KeyPair>,
    rsa: Arc<RsaKeyPair>,
}

impl std::fmt::Debug for GhlSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GhlSigner").finish_non_exhaustive()
    }
}

impl GhlSigner {
    pub fn generate() -> Self {
        Self {
            ed25519: Arc::new(Ed25519KeyPair::generate().expect("an Ed25519 key")),
            rsa: Arc::new(RsaKeyPair::generate(KeySize::Rsa2048).expect("an RSA key")),
        }
    }

    /// The Ed25519 public key, base64 DER SubjectPublicKeyInfo.
    pub fn ed25519_public(&self) -> String {
        let der: PublicKeyX509Der = self.ed25519.public_key().as_der().expect("DER");
        B64.encode(der.as_ref())
    }

    /// The RSA public key, base64 DER SubjectPublicKeyInfo.
    pub fn rsa_public(&self) -> String {
        let der: PublicKeyX509Der = self.rsa.public_key().as_der().expect("DER");
        B64.encode(der.as_ref())
    }

    /// The RSA public key as a PEM block.
    pub fn rsa_public_pem(&self) -> String {
        let b64 = self.rsa_public();
        let lines: Vec<&str> = b64.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).expect("ascii")).collect();
        format!("-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n", lines.join("\n"))
    }

    /// `x-ghl-signature` for `body`.
    pub fn ed25519(&self, body: &[u8]) -> String {
        B64.encode(self.ed25519.sign(body).as_ref())
    }

    /// `x-wh-signature` for `body`.
    pub fn rsa(&self, body: &[u8]) -> String {
        let mut sig = vec![0u8; self.rsa.public_modulus_len()];
        self.rsa.sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), body, &mut sig).expect("RSA signature");
        B64.encode(sig)
    }

    /// The environment the intake reads these keys from.
    pub fn intake_env(&self) -> Vec<(String, String)> {
        vec![
            ("GHL_WEBHOOK_ED25519_KEYS".into(), self.ed25519_public()),
            ("GHL_WEBHOOK_RSA_KEYS".into(), self.rsa_public()),
        ]
    }
}
