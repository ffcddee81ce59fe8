//! The on-disk frame of one WAL record.
//!
//! ```text
//! offset  0  u32 LE  body length; the top bit marks the first frame
//!                    written after a sync (the start of a sync group)
//! offset  4  u64 LE  LSN (log sequence number)
//! offset 12  u32 LE  CRC32C of the body
//! offset 16  u32 LE  CRC32C of bytes 0..16 (the header)
//! offset 20  body    (bincode payload)
//! ```
//!
//! The header has its own checksum so that a damaged length is told apart
//! from a frame cut short by a crash: only the latter may be truncated away.
//! The sync-group mark tells replay where durable data ends: after a power
//! loss only the last group (written, not yet synced) may be damaged, in
//! any of its bytes.

/// Size of a frame header in bytes.
pub const HEADER_LEN: usize = 20;
/// Largest body a frame may carry; a larger length is corruption.
pub const MAX_BODY_LEN: usize = 1 << 30;

/// A parsed, checked frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Length of the body in bytes.
    pub body_len: usize,
    /// The record's log sequence number.
    pub lsn: u64,
    /// CRC32C of the body.
    pub body_crc: u32,
    /// Whether the frame is the first written after a sync.
    pub starts_sync_group: bool,
}

/// The length field's bit that marks the start of a sync group.
const SYNC_GROUP_START: u32 = 1 << 31;

/// Why a header could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderProblem {
    /// The header checksum does not match.
    BadChecksum,
    /// The checksum matches but the length is impossible.
    BadLength,
}

/// Writes the frame header for `body` with `lsn` into `out`, then the body;
/// the header marks the start of a sync group or not.
pub fn encode_frame(out: &mut Vec<u8>, lsn: u64, body: &[u8], body_crc: u32, starts_group: bool) {
    let start = out.len();
    let mut length = body.len() as u32;
    if starts_group {
        length |= SYNC_GROUP_START;
    }
    out.extend_from_slice(&length.to_le_bytes());
    out.extend_from_slice(&lsn.to_le_bytes());
    out.extend_from_slice(&body_crc.to_le_bytes());
    let header_crc = crc32c::crc32c(&out[start..start + 16]);
    out.extend_from_slice(&header_crc.to_le_bytes());
    out.extend_from_slice(body);
}

/// Checksum of a body, computed before the frame is queued.
pub fn body_checksum(body: &[u8]) -> u32 {
    crc32c::crc32c(body)
}

/// Parses a frame header from exactly [`HEADER_LEN`] bytes.
pub fn decode_header(bytes: &[u8; HEADER_LEN]) -> Result<FrameHeader, HeaderProblem> {
    let stored_crc = u32::from_le_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]);
    if crc32c::crc32c(&bytes[..16]) != stored_crc {
        return Err(HeaderProblem::BadChecksum);
    }
    let length = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let body_len = (length & !SYNC_GROUP_START) as usize;
    if body_len > MAX_BODY_LEN {
        return Err(HeaderProblem::BadLength);
    }
    let mut lsn_bytes = [0u8; 8];
    lsn_bytes.copy_from_slice(&bytes[4..12]);
    Ok(FrameHeader {
        body_len,
        lsn: u64::from_le_bytes(lsn_bytes),
        body_crc: u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]),
        starts_sync_group: length & SYNC_GROUP_START != 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_round_trips() {
        let body = b"hello wal";
        let mut out = Vec::new();
        encode_frame(&mut out, 42, body, body_checksum(body), true);
        assert_eq!(out.len(), HEADER_LEN + body.len());
        let header: [u8; HEADER_LEN] = out[..HEADER_LEN].try_into().unwrap();
        let parsed = decode_header(&header).unwrap();
        assert_eq!(parsed.lsn, 42);
        assert_eq!(parsed.body_len, body.len());
        assert_eq!(parsed.body_crc, body_checksum(&out[HEADER_LEN..]));
    }

    #[test]
    fn any_flipped_header_bit_is_detected() {
        let mut out = Vec::new();
        encode_frame(&mut out, 7, b"x", body_checksum(b"x"), false);
        for bit in 0..(HEADER_LEN * 8) {
            let mut damaged: [u8; HEADER_LEN] = out[..HEADER_LEN].try_into().unwrap();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(decode_header(&damaged).is_err(), "bit {bit}");
        }
    }
}
