//! The `key=value` text format of Login and Text PDUs (RFC 7143 §6.1, §6.2), with
//! continuation of one text across several PDUs (the C bit, RFC 7143 §11.10.2).

/// RFC 7143 §6.1: a key name is at most 63 bytes.
pub const MAX_KEY_LEN: usize = 63;
/// Upper bound on one value. RFC 7143 §6.1 limits simple values to 255 bytes but lets keys such
/// as CHAP_C/CHAP_R and binary values grow larger; 8192 covers every key we understand.
pub const MAX_VALUE_LEN: usize = 8192;
/// Upper bound on a text reassembled from continued PDUs (peer-controlled, so bounded).
pub const MAX_TEXT_LEN: usize = 64 * 1024;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TextError {
    /// A pair without `=` or with an empty key (RFC 7143 §6.1).
    Syntax(String),
    KeyTooLong,
    ValueTooLong(String),
    /// Continued text grew beyond [`MAX_TEXT_LEN`].
    TooLong,
    /// Not UTF-8 (RFC 7143 §6.1: text is UTF-8).
    Encoding,
}

/// Parse a complete text (all continuation PDUs joined) into ordered pairs.
pub fn parse(data: &[u8]) -> Result<Vec<(String, String)>, TextError> {
    let mut out = Vec::new();
    for item in data.split(|&b| b == 0) {
        if item.is_empty() {
            continue; // trailing NUL / padding
        }
        let s = std::str::from_utf8(item).map_err(|_| TextError::Encoding)?;
        let Some((k, v)) = s.split_once('=') else {
            return Err(TextError::Syntax(truncate(s)));
        };
        if k.is_empty() {
            return Err(TextError::Syntax(truncate(s)));
        }
        if k.len() > MAX_KEY_LEN {
            return Err(TextError::KeyTooLong);
        }
        if v.len() > MAX_VALUE_LEN {
            return Err(TextError::ValueTooLong(k.to_string()));
        }
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

/// Encode pairs as `key=value\0...`.
pub fn encode<K: AsRef<str>, V: AsRef<str>>(pairs: &[(K, V)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in pairs {
        out.extend_from_slice(k.as_ref().as_bytes());
        out.push(b'=');
        out.extend_from_slice(v.as_ref().as_bytes());
        out.push(0);
    }
    out
}

/// Gathers a text split over PDUs with the C bit set (RFC 7143 §11.10.2), bounded.
#[derive(Clone, Debug, Default)]
pub struct Accumulator {
    buf: Vec<u8>,
}

impl Accumulator {
    /// Add one PDU's data segment. Returns the whole text when `cont` is false.
    pub fn push(&mut self, data: &[u8], cont: bool) -> Result<Option<Vec<u8>>, TextError> {
        if self.buf.len() + data.len() > MAX_TEXT_LEN {
            self.buf.clear();
            return Err(TextError::TooLong);
        }
        self.buf.extend_from_slice(data);
        if cont {
            Ok(None)
        } else {
            Ok(Some(std::mem::take(&mut self.buf)))
        }
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn clear(&mut self) {
        self.buf.clear();
    }
}

/// Hands out an outgoing text in pieces of at most `max` bytes; every piece but the last goes
/// out with the C bit set and the initiator answers each with an empty request.
#[derive(Clone, Debug, Default)]
pub struct Splitter {
    buf: Vec<u8>,
    at: usize,
}

impl Splitter {
    pub fn new(text: Vec<u8>) -> Self {
        Splitter { buf: text, at: 0 }
    }

    /// The next piece and whether more follow (the C bit).
    pub fn next_piece(&mut self, max: usize) -> (Vec<u8>, bool) {
        let max = max.max(1);
        let end = (self.at + max).min(self.buf.len());
        let piece = self.buf[self.at..end].to_vec();
        self.at = end;
        (piece, self.at < self.buf.len())
    }

    pub fn has_more(&self) -> bool {
        self.at < self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_encode() {
        let raw = b"InitiatorName=iqn.1993-08.org.debian:01:abc\0SessionType=Normal\0\0\0";
        let p = parse(raw).unwrap();
        assert_eq!(
            p,
            vec![
                (
                    "InitiatorName".into(),
                    "iqn.1993-08.org.debian:01:abc".into()
                ),
                ("SessionType".into(), "Normal".into())
            ]
        );
        assert_eq!(&encode(&p)[..], &raw[..raw.len() - 2]);
        // Value may contain '='.
        assert_eq!(parse(b"X=a=b\0").unwrap(), vec![("X".into(), "a=b".into())]);
        assert_eq!(
            parse(b"Empty=\0").unwrap(),
            vec![("Empty".into(), "".into())]
        );
    }

    #[test]
    fn errors() {
        assert!(matches!(parse(b"novalue\0"), Err(TextError::Syntax(_))));
        assert!(matches!(parse(b"=v\0"), Err(TextError::Syntax(_))));
        assert_eq!(parse(&[0xff, b'=', b'a']), Err(TextError::Encoding));
        let long_key = format!("{}=1", "k".repeat(64));
        assert_eq!(parse(long_key.as_bytes()), Err(TextError::KeyTooLong));
        let long_val = format!("K={}", "v".repeat(MAX_VALUE_LEN + 1));
        assert!(matches!(
            parse(long_val.as_bytes()),
            Err(TextError::ValueTooLong(_))
        ));
    }

    #[test]
    fn continuation() {
        let mut acc = Accumulator::default();
        assert_eq!(acc.push(b"Key=v", true), Ok(None));
        assert_eq!(
            acc.push(b"alue\0", false),
            Ok(Some(b"Key=value\0".to_vec()))
        );
        assert!(acc.is_empty());
        let big = vec![b'a'; MAX_TEXT_LEN];
        assert_eq!(acc.push(&big, true), Ok(None));
        assert_eq!(acc.push(b"x", true), Err(TextError::TooLong));
    }

    #[test]
    fn splitting() {
        let mut s = Splitter::new(b"0123456789".to_vec());
        assert_eq!(s.next_piece(4), (b"0123".to_vec(), true));
        assert_eq!(s.next_piece(4), (b"4567".to_vec(), true));
        assert_eq!(s.next_piece(4), (b"89".to_vec(), false));
        assert!(!s.has_more());
    }
}
