//! Signed, expiring URLs for hosted images: `/v1/images/files/<name>?expires=<unix>&signature=<hex>`
//! where the signature is HMAC-SHA256 over `<name>:<expires>`. Verification is constant time.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

#[derive(Clone)]
pub struct UrlSigner {
    key: Vec<u8>,
}

impl std::fmt::Debug for UrlSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UrlSigner(..)")
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Valid,
    Expired,
    BadSignature,
}

impl UrlSigner {
    pub fn new(key: Vec<u8>) -> anyhow::Result<Self> {
        anyhow::ensure!(key.len() >= 16, "the URL signing key must have at least 16 bytes");
        Ok(Self { key })
    }

    fn mac(&self, name: &str, expires: i64) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        mac.update(name.as_bytes());
        mac.update(b":");
        mac.update(expires.to_string().as_bytes());
        mac
    }

    pub fn sign(&self, name: &str, expires: i64) -> String {
        hex::encode(self.mac(name, expires).finalize().into_bytes())
    }

    pub fn verify(&self, name: &str, expires: i64, signature: &str, now: i64) -> Verdict {
        let Ok(signature) = hex::decode(signature) else {
            return Verdict::BadSignature;
        };
        if self.mac(name, expires).verify_slice(&signature).is_err() {
            Verdict::BadSignature
        } else if expires < now {
            Verdict::Expired
        } else {
            Verdict::Valid
        }
    }
}

/// The signing key: from the environment variable `env` when configured (nodes sharing a blob
/// store must share it), else a random key kept in `data_dir/url-signing.key`.
pub fn load_key(env: Option<&str>, data_dir: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    if let Some(var) = env {
        let value = std::env::var(var)
            .map_err(|_| anyhow::anyhow!("auth.url_signing_key_env names {var}, which is not set"))?;
        // Anyone who guesses the key can mint links to every hosted image.
        anyhow::ensure!(
            value.len() >= 32,
            "{var} holds {} bytes; a URL signing key needs at least 32 (openssl rand -hex 32)",
            value.len()
        );
        return Ok(value.into_bytes());
    }
    let path = data_dir.join("url-signing.key");
    match std::fs::read_to_string(&path) {
        Ok(hex_key) => Ok(hex::decode(hex_key.trim())?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key: [u8; 32] = rand::random();
            // Created owner-only: there is no moment at which another user could read it.
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                options.mode(0o600);
            }
            let mut file = options.open(&path).map_err(|e| anyhow::anyhow!("cannot create {}: {e}", path.display()))?;
            std::io::Write::write_all(&mut file, hex::encode(key).as_bytes())?;
            Ok(key.to_vec())
        }
        Err(e) => Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_and_verify() {
        let signer = UrlSigner::new(vec![7; 32]).unwrap();
        let sig = signer.sign("a.png", 100);
        assert_eq!(signer.verify("a.png", 100, &sig, 50), Verdict::Valid);
        assert_eq!(signer.verify("a.png", 100, &sig, 101), Verdict::Expired);
        assert_eq!(signer.verify("b.png", 100, &sig, 50), Verdict::BadSignature);
        assert_eq!(signer.verify("a.png", 200, &sig, 50), Verdict::BadSignature);
        assert_eq!(signer.verify("a.png", 100, "zz", 50), Verdict::BadSignature);
    }

    #[test]
    fn a_generated_key_is_owner_only_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let key = load_key(None, dir.path()).unwrap();
        assert_eq!(key.len(), 32);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("url-signing.key")).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_eq!(load_key(None, dir.path()).unwrap(), key, "the same key after a restart");
    }

    #[test]
    fn a_short_key_from_the_environment_is_refused() {
        // Cargo sets CARGO_PKG_NAME ("easel-server", 12 bytes) for every test process.
        let err = load_key(Some("CARGO_PKG_NAME"), std::path::Path::new("/nonexistent")).unwrap_err();
        assert!(err.to_string().contains("at least 32"), "{err}");
    }
}
