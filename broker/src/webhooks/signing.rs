//! Signing, the Standard Webhooks way, so that a receiver can tell a
//! delivery came from this broker and was not altered or replayed.
//!
//! A delivery carries three headers: `webhook-id` (the same on every retry,
//! for the receiver's de-duplication), `webhook-timestamp` (Unix seconds of
//! this attempt) and `webhook-signature`: `v1,` and the base64 HMAC-SHA256,
//! keyed by the endpoint's secret, of `{id}.{timestamp}.{body}`. A secret is
//! written `whsec_` and base64 of its bytes. Pure; never logs a secret.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The prefix of a secret's written form.
pub const SECRET_PREFIX: &str = "whsec_";

/// An endpoint's signing key.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

impl Secret {
    /// The key `whsec_…` (or bare base64) spells; `None` when it is not
    /// base64 or shorter than 24 bytes.
    pub fn parse(written: &str) -> Option<Secret> {
        let encoded = written.strip_prefix(SECRET_PREFIX).unwrap_or(written);
        let key = STANDARD.decode(encoded).ok()?;
        (key.len() >= 24).then_some(Secret(key))
    }

    /// A new random secret (32 bytes) in its written form.
    pub fn generate() -> anyhow::Result<String> {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).map_err(|e| anyhow::anyhow!("no randomness for the secret: {e}"))?;
        Ok(format!("{SECRET_PREFIX}{}", STANDARD.encode(key)))
    }

    /// The `webhook-signature` header of `body` sent as `id` at `timestamp`
    /// (Unix seconds).
    pub fn sign(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes a key of any length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }

    /// Whether `header` (space-separated signatures, as a receiver gets it)
    /// holds a valid `v1` signature of `body` as `id` at `timestamp`; in
    /// constant time per signature.
    pub fn verify(&self, id: &str, timestamp: u64, body: &[u8], header: &str) -> bool {
        let expected = self.sign(id, timestamp, body);
        header.split(' ').any(|candidate| {
            candidate.len() == expected.len()
                && candidate
                    .bytes()
                    .zip(expected.bytes())
                    .fold(0u8, |diff, (a, b)| diff | (a ^ b))
                    == 0
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Standard Webhooks reference vector (its libraries' tests), which
    /// Python's `hmac` gives too.
    #[test]
    fn the_reference_vector_signs_as_the_specification_says() {
        let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("a secret");
        let body = br#"{"test": 2432232314}"#;
        let signature = secret.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1_614_265_330, body);
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert!(secret.verify(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            body,
            &format!("v1,bm90IGl0 {signature}")
        ));
        // Another body, id or time, or another key: not valid.
        assert!(!secret.verify("msg_p5jXN8AQM9LWM0D4loKWxJek", 1_614_265_330, b"{}", &signature));
        assert!(!secret.verify("msg_other", 1_614_265_330, body, &signature));
        assert!(!secret.verify("msg_p5jXN8AQM9LWM0D4loKWxJek", 1_614_265_331, body, &signature));
        let other = Secret::parse(&Secret::generate().expect("secret")).expect("parses");
        assert!(!other.verify("msg_p5jXN8AQM9LWM0D4loKWxJek", 1_614_265_330, body, &signature));
    }

    #[test]
    fn a_secret_is_base64_of_enough_bytes_and_never_printed() {
        assert!(Secret::parse("whsec_not base64!").is_none());
        assert!(Secret::parse("whsec_c2hvcnQ=").is_none(), "5 bytes");
        let written = Secret::generate().expect("secret");
        assert!(written.starts_with(SECRET_PREFIX));
        let secret = Secret::parse(&written).expect("parses");
        assert_eq!(format!("{secret:?}"), "Secret(…)");
    }
}
