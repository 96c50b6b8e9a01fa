//! Bounded chunks for streamed bytes.

use bytes::Bytes;

/// Largest chunk any service sends in a stream: far below gRPC's 4 MiB
/// message limit, large enough that per-message overhead is negligible.
pub const CHUNK_SIZE: usize = 64 * 1024;

/// Splits `bytes` into pieces of at most [`CHUNK_SIZE`] without copying.
pub fn split(bytes: Bytes) -> impl Iterator<Item = Bytes> {
    let mut rest = bytes;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            None
        } else {
            Some(rest.split_to(rest.len().min(CHUNK_SIZE)))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_without_losing_or_growing_anything() {
        let data: Vec<u8> = (0..(CHUNK_SIZE * 2 + 5)).map(|i| i as u8).collect();
        let pieces: Vec<Bytes> = split(Bytes::from(data.clone())).collect();
        assert_eq!(pieces.len(), 3);
        assert!(pieces.iter().all(|p| p.len() <= CHUNK_SIZE));
        assert_eq!(pieces.concat(), data);
        assert_eq!(split(Bytes::new()).count(), 0);
    }
}
