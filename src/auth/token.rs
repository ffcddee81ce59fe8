//! Token texts: `stepstore_<id>_<secret>`, where the id (12 hex digits)
//! names the token in the store and the secret is 32 random bytes
//! (base64url, 256 bits). The store keeps the id and the SHA-256 of the
//! secret, never the secret; a presented token is found by its id and its
//! secret's hash compared in constant time.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// What every token starts with (so a leaked one is recognisable, and a
/// scanner can find it).
pub const PREFIX: &str = "stepstore_";
/// Hex digits of a token's id.
const ID_DIGITS: usize = 12;
/// Random bytes of a token's secret.
const SECRET_BYTES: usize = 32;

/// The SHA-256 of a token's secret.
pub type SecretHash = [u8; 32];

/// A newly made token: its text (shown once) and what the store keeps.
pub struct NewToken {
    /// The whole token, to give to the user once.
    pub text: String,
    /// Its id.
    pub id: String,
    /// The hash of its secret.
    pub hash: SecretHash,
}

/// Makes a random token.
pub fn generate() -> NewToken {
    let mut rng = rand::rng();
    let mut id_bytes = [0u8; ID_DIGITS / 2];
    rng.fill_bytes(&mut id_bytes);
    let id: String = id_bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    let mut secret = [0u8; SECRET_BYTES];
    rng.fill_bytes(&mut secret);
    let secret = URL_SAFE_NO_PAD.encode(secret);
    NewToken {
        text: format!("{PREFIX}{id}_{secret}"),
        hash: hash_secret(&secret),
        id,
    }
}

/// The SHA-256 of a secret's text.
pub fn hash_secret(secret: &str) -> SecretHash {
    Sha256::digest(secret.as_bytes()).into()
}

/// Splits a presented token into its id and secret, if it has the form.
pub fn parse(text: &str) -> Option<(&str, &str)> {
    let rest = text.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let well_formed = id.len() == ID_DIGITS
        && id.bytes().all(|byte| byte.is_ascii_hexdigit())
        && !secret.is_empty()
        && secret.len() <= 64;
    well_formed.then_some((id, secret))
}

/// Whether two hashes are equal, in time independent of where they differ.
pub fn hashes_equal(a: &SecretHash, b: &SecretHash) -> bool {
    let mut difference = 0u8;
    for (x, y) in a.iter().zip(b.iter()) {
        difference |= x ^ y;
    }
    std::hint::black_box(difference) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_parse_back_to_their_id_and_secret_hash() {
        let token = generate();
        assert!(token.text.starts_with(PREFIX));
        let (id, secret) = parse(&token.text).unwrap();
        assert_eq!(id, token.id);
        assert!(hashes_equal(&hash_secret(secret), &token.hash));
        // 256 bits of secret: 43 base64url characters.
        assert_eq!(secret.len(), 43);
        assert_ne!(generate().text, token.text);
    }

    #[test]
    fn malformed_tokens_do_not_parse() {
        for text in [
            "",
            "stepstore_",
            "stepstore_abc_def",
            "stepstore_0123456789ab_",
            "other_0123456789ab_secret",
            "stepstore_0123456789zz_secret",
        ] {
            assert!(parse(text).is_none(), "{text}");
        }
    }

    #[test]
    fn hash_comparison_sees_any_difference() {
        let a = hash_secret("a");
        let mut b = a;
        assert!(hashes_equal(&a, &b));
        b[31] ^= 1;
        assert!(!hashes_equal(&a, &b));
    }
}
