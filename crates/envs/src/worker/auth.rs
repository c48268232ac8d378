//! The shared secret of workers reached over TCP and the handshake's challenge–response.
//!
//! A listening worker (`python -m mvp_envs.worker --listen`, or a Ray worker actor) opens every
//! connection with a `CHALLENGE` frame of 32 random bytes; the client's `HELLO` carries
//! `"auth": hex(HMAC-SHA256(secret, "mvp-worker-hello/3" ‖ nonce))`. The secret itself never
//! travels, and a fresh nonce per connection makes a recorded `HELLO` useless to replay. Child
//! processes talk over private pipes and need no secret.
//!
//! The secret comes from `$MVP_WORKER_SECRET`, else from a file (`env.worker_secret_file`,
//! default `~/.config/mvp/worker-secret`, which a listening worker makes when it is missing);
//! never from a command line, where other users of the machine could read it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

/// The environment variable that carries a secret (it wins over any file).
pub const SECRET_ENV: &str = "MVP_WORKER_SECRET";

/// Bytes of a worker's challenge.
pub(super) const NONCE_BYTES: usize = 32;

/// Domain separation of the handshake's HMAC (mirror of `AUTH_CONTEXT` in protocol.py).
const AUTH_CONTEXT: &[u8] = b"mvp-worker-hello/3";

/// A shared secret of at least 16 bytes (the stripped text of its file or variable). Its
/// `Debug` form never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct WorkerSecret(Arc<str>);

impl std::fmt::Debug for WorkerSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WorkerSecret(..)")
    }
}

impl WorkerSecret {
    /// A secret from its text (surrounding whitespace stripped); `source` names it in errors.
    pub fn new(text: &str, source: &str) -> anyhow::Result<Self> {
        let text = text.trim();
        if text.len() < 16 {
            bail!("the worker secret from {source} has {} bytes; it needs at least 16", text.len());
        }
        Ok(Self(text.into()))
    }

    /// A new random secret: 32 bytes from the thread's cryptographic generator, in hex (for the
    /// workers a trainer places itself, on Ray).
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        Self(bytes.iter().map(|b| format!("{b:02x}")).collect::<String>().into())
    }

    /// The secret in a file.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "cannot read the env workers' secret at {}: copy the secret file of the worker's machine \
                 (`python -m mvp_envs.worker --listen` makes {} there), or set {SECRET_ENV}",
                path.display(),
                default_secret_path().display()
            )
        })?;
        Self::new(&text, &path.display().to_string())
    }

    /// `$MVP_WORKER_SECRET` when it is set, else the file at `file`, else the default file
    /// ([`default_secret_path`]).
    pub fn resolve(file: Option<&Path>) -> anyhow::Result<Self> {
        match std::env::var(SECRET_ENV) {
            Ok(text) if !text.trim().is_empty() => Self::new(&text, &format!("${SECRET_ENV}")),
            _ => Self::from_file(&file.map(Path::to_path_buf).unwrap_or_else(default_secret_path)),
        }
    }

    /// The secret's text, for the environment of a process that must hold it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The `HELLO`'s answer to `nonce`: hex(HMAC-SHA256(secret, context ‖ nonce)).
    pub fn answer(&self, nonce: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.0.as_bytes()).expect("HMAC takes keys of any length");
        mac.update(AUTH_CONTEXT);
        mac.update(nonce);
        mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// `$XDG_CONFIG_HOME/mvp/worker-secret`, by default `~/.config/mvp/worker-secret` (the same
/// default as the Python worker's).
pub fn default_secret_path() -> PathBuf {
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".config"));
    config.join("mvp").join("worker-secret")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_the_hmac_of_the_python_side_and_differ_per_nonce_and_secret() {
        // protocol.auth_answer(b"0123456789abcdef", bytes(range(32))), computed by Python's hmac.
        let s = WorkerSecret::new("  0123456789abcdef\n", "test").unwrap();
        let nonce: Vec<u8> = (0..32).collect();
        let python = "fd5bae625bad7289492cfcee38aa6c882d40acc8f65810bd3a928f8551f8afbc";
        assert_eq!(s.answer(&nonce), python);
        assert_ne!(s.answer(&[0; 32]), python);
        assert_ne!(WorkerSecret::new("0123456789abcdeF", "test").unwrap().answer(&nonce), python);
    }

    #[test]
    fn short_secrets_are_refused_and_debug_hides_the_secret() {
        let err = WorkerSecret::new("short\n", "$MVP_WORKER_SECRET").unwrap_err().to_string();
        assert!(err.contains("$MVP_WORKER_SECRET") && err.contains("at least 16"), "{err}");
        let s = WorkerSecret::generate();
        assert_eq!(s.expose().len(), 64);
        assert_ne!(s, WorkerSecret::generate());
        assert!(!format!("{s:?}").contains(s.expose()));
        let err = format!("{:#}", WorkerSecret::from_file(Path::new("/nonexistent/secret")).unwrap_err());
        assert!(err.contains("/nonexistent/secret") && err.contains(SECRET_ENV), "{err}");
    }
}
