//! The codec for task arguments, results and bootstrap frames: postcard, a
//! compact serde format with no schema and no unsafe code. Decoding is strict:
//! trailing bytes are an error, so a truncated or padded frame never passes.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Encodes `value`; the error text names what failed.
pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, String> {
    postcard::to_stdvec(value).map_err(|e| e.to_string())
}

/// Decodes a whole buffer into `T`.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    match postcard::take_from_bytes::<T>(bytes) {
        Ok((v, [])) => Ok(v),
        Ok((_, rest)) => Err(format!("{} unexpected trailing bytes", rest.len())),
        Err(e) => Err(e.to_string()),
    }
}
