//! Standard Webhooks signatures: `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`,
//! keyed with the secret's bytes (`whsec_<base64>`). During a rotation's grace period both the
//! new and the previous secret sign, space-separated, and receivers accept either.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use herald_wire::ErrorBody;

const PREFIX: &str = "whsec_";
/// Secret sizes the spec allows, in bytes.
const SECRET_BYTES: std::ops::RangeInclusive<usize> = 24..=64;

/// A fresh `whsec_…` secret of 32 random bytes.
pub fn generate_secret() -> String {
    let mut bytes = [0u8; 32];
    if getrandom::fill(&mut bytes).is_err() {
        bytes = std::array::from_fn(|_| fastrand::u8(..));
    }
    format!("{PREFIX}{}", STANDARD.encode(bytes))
}

/// The key bytes of a `whsec_<base64>` secret, or why it is not one.
pub fn secret_key(secret: &str) -> Result<Vec<u8>, ErrorBody> {
    let invalid =
        |why: &str| ErrorBody::new("invalid_secret", format!("a secret is whsec_ and base64 of 24 to 64 bytes; {why}"));
    let encoded = secret.strip_prefix(PREFIX).ok_or_else(|| invalid("the whsec_ prefix is missing"))?;
    let key = STANDARD.decode(encoded).map_err(|_| invalid("this is not base64"))?;
    if !SECRET_BYTES.contains(&key.len()) {
        return Err(invalid(&format!("this is {} bytes", key.len())));
    }
    Ok(key)
}

/// The `webhook-signature` header value for `body` sent as message `id` at `timestamp`
/// (seconds), signed with each of `secrets`.
pub fn sign(secrets: &[&str], id: &str, timestamp: u64, body: &str) -> String {
    let signatures: Vec<String> = secrets
        .iter()
        .filter_map(|secret| secret_key(secret).ok())
        .map(|key| {
            let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes keys of any length");
            mac.update(id.as_bytes());
            mac.update(b".");
            mac.update(timestamp.to_string().as_bytes());
            mac.update(b".");
            mac.update(body.as_bytes());
            format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
        })
        .collect();
    signatures.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification.
    #[test]
    fn matches_the_specification_example() {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = r#"{"test": 2432232314}"#;
        assert_eq!(
            sign(&[secret], "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn secrets_are_checked_and_generated_well_formed() {
        let secret = generate_secret();
        assert_eq!(secret_key(&secret).unwrap().len(), 32);
        assert_ne!(generate_secret(), secret);
        for bad in ["", "whsec_", "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_!!!", "whsec_c2hvcnQ="] {
            assert_eq!(secret_key(bad).unwrap_err().code, "invalid_secret", "{bad:?}");
        }
        let both = sign(&[&secret, &generate_secret()], "msg_1", 1, "{}");
        assert_eq!(both.split(' ').count(), 2);
        assert!(both.split(' ').all(|signature| signature.starts_with("v1,")));
    }
}
