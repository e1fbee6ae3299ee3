//! The codec for task arguments, results and bootstrap frames: MessagePack
//! through `rmp-serde`. It keeps the text of a type's own serde error (a
//! `Deserialize` impl that says "3 is odd" is reported as such), which
//! postcard and bincode throw away. Decoding is strict: trailing bytes are an
//! error, so a truncated or padded frame never passes.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Encodes `value`; the error text names what failed.
pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, String> {
    rmp_serde::to_vec(value).map_err(|e| e.to_string())
}

/// Decodes a whole buffer into `T`.
///
/// The value is read straight from the slice (a byte string is copied
/// once, into the value; a reader-based decoder copied it into a growing
/// buffer first). The one value's extent is measured beforehand by walking
/// the MessagePack structure without copying, so trailing bytes are still
/// an error.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    match value_len(bytes, 0, 0) {
        Some(n) if n == bytes.len() => rmp_serde::from_slice(bytes).map_err(|e| e.to_string()),
        Some(n) => {
            // Decode first: a frame of the wrong type is reported by serde
            // (what it expected), a right one by its padding.
            rmp_serde::from_slice::<T>(bytes).map_err(|e| e.to_string())?;
            Err(format!("{} unexpected trailing bytes", bytes.len() - n))
        }
        // Malformed or truncated: let the decoder say what is wrong.
        None => {
            let mut rest = bytes;
            let value = rmp_serde::from_read(&mut rest).map_err(|e| e.to_string())?;
            if rest.is_empty() {
                Ok(value)
            } else {
                Err(format!("{} unexpected trailing bytes", rest.len()))
            }
        }
    }
}

/// Where the MessagePack value starting at `pos` ends, or `None` if it is
/// malformed, truncated, or nested deeper than rmp-serde allows.
fn value_len(b: &[u8], pos: usize, depth: u32) -> Option<usize> {
    if depth > 1024 {
        return None;
    }
    let be = |at: usize, n: usize| -> Option<usize> {
        let s = b.get(at..at.checked_add(n)?)?;
        Some(s.iter().fold(0usize, |acc, &x| (acc << 8) | usize::from(x)))
    };
    let m = *b.get(pos)?;
    let p = pos + 1;
    let skip = |n: usize| p.checked_add(n).filter(|&end| end <= b.len());
    // A header of `head` bytes, then `len` more (checked: on a 32-bit
    // target a 32-bit length plus its header can overflow `usize`).
    let skip_len = |head: usize, len: usize| skip(head.checked_add(len)?);
    let items = |first: usize, count: usize, per: usize| -> Option<usize> {
        let mut at = first;
        for _ in 0..count.checked_mul(per)? {
            at = value_len(b, at, depth + 1)?;
        }
        Some(at)
    };
    match m {
        0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => Some(p),
        0x80..=0x8f => items(p, usize::from(m & 0x0f), 2),
        0x90..=0x9f => items(p, usize::from(m & 0x0f), 1),
        0xa0..=0xbf => skip(usize::from(m & 0x1f)),
        0xc4 | 0xd9 => skip_len(1, be(p, 1)?),
        0xc5 | 0xda => skip_len(2, be(p, 2)?),
        0xc6 | 0xdb => skip_len(4, be(p, 4)?),
        0xc7 => skip_len(2, be(p, 1)?),
        0xc8 => skip_len(3, be(p, 2)?),
        0xc9 => skip_len(5, be(p, 4)?),
        0xca => skip(4),
        0xcb => skip(8),
        0xcc | 0xd0 => skip(1),
        0xcd | 0xd1 => skip(2),
        0xce | 0xd2 => skip(4),
        0xcf | 0xd3 => skip(8),
        0xd4 => skip(2),
        0xd5 => skip(3),
        0xd6 => skip(5),
        0xd7 => skip(9),
        0xd8 => skip(17),
        0xdc => items(p.checked_add(2)?, be(p, 2)?, 1),
        0xdd => items(p.checked_add(4)?, be(p, 4)?, 1),
        0xde => items(p.checked_add(2)?, be(p, 2)?, 2),
        0xdf => items(p.checked_add(4)?, be(p, 4)?, 2),
        // 0xc1: never used.
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_len_walks_every_kind() {
        use std::collections::BTreeMap;
        let mut map = BTreeMap::new();
        map.insert("k".to_owned(), vec![Some(1.5f64), None]);
        let samples: Vec<Vec<u8>> = vec![
            encode(&0u8).unwrap(),
            encode(&-1i8).unwrap(),
            encode(&300u16).unwrap(),
            encode(&-70_000i32).unwrap(),
            encode(&u64::MAX).unwrap(),
            encode(&1.5f32).unwrap(),
            encode(&true).unwrap(),
            encode(&()).unwrap(),
            encode(&"x".repeat(40)).unwrap(),
            encode(&"y".repeat(300)).unwrap(),
            encode(&"z".repeat(70_000)).unwrap(),
            encode(&serde_bytes::ByteBuf::from(vec![7u8; 300])).unwrap(),
            encode(&serde_bytes::ByteBuf::from(vec![7u8; 70_000])).unwrap(),
            encode(&(0..20u32).collect::<Vec<_>>()).unwrap(),
            encode(&(0..70_000u32).collect::<Vec<_>>()).unwrap(),
            encode(&map).unwrap(),
            encode(&(1u8, ("a", [2u16; 3]), Some(vec![(); 17]))).unwrap(),
        ];
        for s in &samples {
            assert_eq!(
                value_len(s, 0, 0),
                Some(s.len()),
                "{:x?}",
                &s[..s.len().min(8)]
            );
            assert_eq!(value_len(&s[..s.len() - 1], 0, 0), None, "truncated");
        }
        assert_eq!(value_len(&[0xc1], 0, 0), None);
        // Nested past rmp-serde's limit: refused, not a stack overflow.
        assert_eq!(value_len(&vec![0x91; 5000], 0, 0), None);
    }

    #[test]
    fn round_trip_and_strictness() {
        let bytes = encode(&(1u8, "two".to_owned(), vec![3u64])).unwrap();
        let back: (u8, String, Vec<u64>) = decode(&bytes).unwrap();
        assert_eq!(back, (1, "two".to_owned(), vec![3]));
        let mut padded = bytes.clone();
        padded.push(0);
        assert!(
            decode::<(u8, String, Vec<u64>)>(&padded)
                .unwrap_err()
                .contains("trailing")
        );
        assert!(decode::<(u8, String, Vec<u64>)>(&bytes[..bytes.len() - 1]).is_err());
        assert!(decode::<u64>(b"\xc1").is_err());
    }
}
