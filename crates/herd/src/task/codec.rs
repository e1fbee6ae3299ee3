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
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let mut rest = bytes;
    let value = rmp_serde::from_read(&mut rest).map_err(|e| e.to_string())?;
    if rest.is_empty() {
        Ok(value)
    } else {
        Err(format!("{} unexpected trailing bytes", rest.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
