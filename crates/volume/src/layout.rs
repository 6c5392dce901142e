//! How a byte range of a volume maps onto chunk requests.
//!
//! A volume IO `[offset, offset + len)` becomes pieces that never cross a
//! chunk boundary (a chunk lives on exactly one copyset) and never carry
//! more than [`MAX_IO_LEN`] bytes (the frame and raft-entry limit). Pieces
//! are listed in volume order, so a read is reassembled by concatenation.

use pikafs_proto::{CHUNK_SIZE, MAX_IO_LEN};

/// One chunk request of a volume IO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    /// Chunk index within the volume.
    pub chunk: u64,
    /// Byte offset inside the chunk; `< CHUNK_SIZE`, so it fits the wire u32.
    pub chunk_offset: u32,
    /// Where this piece starts in the caller's buffer.
    pub buf_offset: usize,
    /// Bytes in this piece, `1..=MAX_IO_LEN`.
    pub len: usize,
}

/// Splits `[offset, offset + len)` into pieces in volume order. Zero length
/// yields no pieces. The caller has checked the range against the volume
/// size, so `offset + len` does not overflow.
pub fn split(offset: u64, len: usize) -> Vec<Piece> {
    split_with(offset, len, CHUNK_SIZE, MAX_IO_LEN)
}

/// [`split`] with explicit geometry, so tests can use small numbers.
pub(crate) fn split_with(offset: u64, len: usize, chunk_size: u64, max_io: usize) -> Vec<Piece> {
    let mut pieces = Vec::with_capacity(len / max_io + 2);
    let mut pos = offset;
    let end = offset + len as u64;
    while pos < end {
        let chunk = pos / chunk_size;
        let in_chunk = pos % chunk_size;
        let chunk_left = chunk_size - in_chunk;
        let n = (end - pos).min(chunk_left).min(max_io as u64);
        pieces.push(Piece {
            chunk,
            chunk_offset: u32::try_from(in_chunk).expect("chunk size fits in u32"),
            buf_offset: (pos - offset) as usize,
            len: n as usize,
        });
        pos += n;
    }
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks the invariants against a plain byte-by-byte model: every byte
    /// of the range is covered once, in order, at the right chunk position.
    fn check(offset: u64, len: usize, chunk: u64, max_io: usize) {
        let pieces = split_with(offset, len, chunk, max_io);
        let mut model = Vec::new();
        for p in &pieces {
            assert!(p.len >= 1 && p.len <= max_io, "{p:?}");
            assert!(p.chunk_offset as u64 + p.len as u64 <= chunk, "{p:?}");
            for i in 0..p.len {
                model.push((
                    p.buf_offset + i,
                    p.chunk * chunk + p.chunk_offset as u64 + i as u64,
                ));
            }
        }
        let want: Vec<_> = (0..len).map(|i| (i, offset + i as u64)).collect();
        assert_eq!(model, want, "offset {offset} len {len}");
    }

    #[test]
    fn zero_length_has_no_pieces() {
        assert!(split(12345, 0).is_empty());
    }

    #[test]
    fn splits_at_chunk_boundary() {
        let p = split(CHUNK_SIZE - 4096, 8192);
        assert_eq!(
            p,
            vec![
                Piece {
                    chunk: 0,
                    chunk_offset: (CHUNK_SIZE - 4096) as u32,
                    buf_offset: 0,
                    len: 4096
                },
                Piece {
                    chunk: 1,
                    chunk_offset: 0,
                    buf_offset: 4096,
                    len: 4096
                },
            ]
        );
    }

    #[test]
    fn splits_into_max_io_pieces() {
        let p = split(0, 3 * MAX_IO_LEN + 10);
        assert_eq!(p.len(), 4);
        assert!(p[..3].iter().all(|p| p.len == MAX_IO_LEN));
        assert_eq!(p[3].len, 10);
        assert_eq!(p[3].chunk_offset as usize, 3 * MAX_IO_LEN);
    }

    #[test]
    fn unaligned_range_spanning_chunks() {
        // 1 MiB IO starting 100 bytes before the end of chunk 2.
        let off = 3 * CHUNK_SIZE - 100;
        let p = split(off, MAX_IO_LEN);
        assert_eq!(p.len(), 2);
        assert_eq!((p[0].chunk, p[0].len), (2, 100));
        assert_eq!(
            (p[1].chunk, p[1].chunk_offset, p[1].buf_offset),
            (3, 0, 100)
        );
        assert_eq!(p[1].len, MAX_IO_LEN - 100);
    }

    #[test]
    fn model_check_small_geometry() {
        // Exhaustive over small numbers: chunk 16, max io 5.
        for offset in 0..40u64 {
            for len in 0..50usize {
                check(offset, len, 16, 5);
            }
        }
    }
}
