//! TFRecord framing, the container of TensorBoard event files: each record
//! is `u64` length (little-endian), `u32` masked CRC32C of the length bytes,
//! the data, and `u32` masked CRC32C of the data. The mask is
//! `((crc >> 15) | (crc << 17)) + 0xa282ead8` (wrapping).

use std::io::{self, Read, Write};

use thiserror::Error;

/// Records larger than this are refused as damage (TensorBoard events are
/// small; a bogus length must not make the reader allocate gigabytes).
pub const MAX_RECORD_BYTES: u64 = 256 << 20;

/// Errors reading TFRecords.
#[derive(Debug, Error)]
pub enum TfRecordError {
    /// The file could not be read.
    #[error("read failed at offset {offset}: {source}")]
    Io {
        /// Where.
        offset: u64,
        /// The OS error.
        source: io::Error,
    },
    /// The file ends inside a record (a writer stopped mid-record).
    #[error("the file ends inside the record at offset {offset}")]
    Truncated {
        /// Start of the cut record.
        offset: u64,
    },
    /// A checksum does not match: the file is damaged.
    #[error("the {what} checksum of the record at offset {offset} does not match")]
    Checksum {
        /// `length` or `data`.
        what: &'static str,
        /// Start of the record.
        offset: u64,
    },
    /// The length field is implausibly large.
    #[error("the record at offset {offset} claims {length} bytes")]
    TooLarge {
        /// Start of the record.
        offset: u64,
        /// The claimed length.
        length: u64,
    },
}

/// The masked CRC32C TFRecord stores.
pub fn masked_crc32c(data: &[u8]) -> u32 {
    let crc = crc32c::crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// Writes one record (used by tests and tools that produce event files).
pub fn write_record(out: &mut impl Write, data: &[u8]) -> io::Result<()> {
    let length = (data.len() as u64).to_le_bytes();
    out.write_all(&length)?;
    out.write_all(&masked_crc32c(&length).to_le_bytes())?;
    out.write_all(data)?;
    out.write_all(&masked_crc32c(data).to_le_bytes())
}

/// Reads records one by one, checking both checksums.
pub struct RecordReader<R> {
    reader: R,
    offset: u64,
}

impl<R: Read> RecordReader<R> {
    /// Reads from `reader`, positioned at a record boundary.
    pub fn new(reader: R) -> Self {
        RecordReader { reader, offset: 0 }
    }

    /// Bytes consumed so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The next record's data, or `None` at a clean end of file.
    pub fn next_record(&mut self) -> Result<Option<Vec<u8>>, TfRecordError> {
        let start = self.offset;
        let mut header = [0u8; 12];
        match self.fill(&mut header, start)? {
            0 => return Ok(None),
            12 => {}
            _ => return Err(TfRecordError::Truncated { offset: start }),
        }
        let length_bytes: [u8; 8] = header[..8].try_into().unwrap_or([0; 8]);
        let length_crc = u32::from_le_bytes(header[8..].try_into().unwrap_or([0; 4]));
        if masked_crc32c(&length_bytes) != length_crc {
            return Err(TfRecordError::Checksum {
                what: "length",
                offset: start,
            });
        }
        let length = u64::from_le_bytes(length_bytes);
        if length > MAX_RECORD_BYTES {
            return Err(TfRecordError::TooLarge {
                offset: start,
                length,
            });
        }
        let mut data = vec![0u8; length as usize + 4];
        if self.fill(&mut data, start)? != data.len() {
            return Err(TfRecordError::Truncated { offset: start });
        }
        let data_crc_bytes: [u8; 4] = data[length as usize..].try_into().unwrap_or([0; 4]);
        data.truncate(length as usize);
        if masked_crc32c(&data) != u32::from_le_bytes(data_crc_bytes) {
            return Err(TfRecordError::Checksum {
                what: "data",
                offset: start,
            });
        }
        Ok(Some(data))
    }

    /// Reads until `buffer` is full or the file ends; returns bytes read.
    fn fill(&mut self, buffer: &mut [u8], record_start: u64) -> Result<usize, TfRecordError> {
        let mut filled = 0;
        while filled < buffer.len() {
            match self.reader.read(&mut buffer[filled..]) {
                Ok(0) => break,
                Ok(count) => filled += count,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(TfRecordError::Io {
                        offset: record_start,
                        source,
                    });
                }
            }
        }
        self.offset += filled as u64;
        Ok(filled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_match_tensorflows_checksums() {
        // A record written by TensorFlow: the 24-byte "brain.Event:2" header
        // event's length is 24 = 0x18, whose masked CRC is 0x224b7fa3.
        assert_eq!(masked_crc32c(&24u64.to_le_bytes()), 0x224b_7fa3);
        let mut file = Vec::new();
        write_record(&mut file, b"first").unwrap();
        write_record(&mut file, b"").unwrap();
        write_record(&mut file, &[7u8; 1000]).unwrap();
        let mut reader = RecordReader::new(file.as_slice());
        assert_eq!(reader.next_record().unwrap().unwrap(), b"first");
        assert_eq!(reader.next_record().unwrap().unwrap(), b"");
        assert_eq!(reader.next_record().unwrap().unwrap(), vec![7u8; 1000]);
        assert!(reader.next_record().unwrap().is_none());
        assert_eq!(reader.offset(), file.len() as u64);
    }

    #[test]
    fn damage_and_truncation_are_reported_with_the_offset() {
        let mut file = Vec::new();
        write_record(&mut file, b"good").unwrap();
        let second = file.len() as u64;
        write_record(&mut file, b"damaged").unwrap();
        let mut damaged = file.clone();
        let last = damaged.len() - 6;
        damaged[last] ^= 0xff;
        let mut reader = RecordReader::new(damaged.as_slice());
        reader.next_record().unwrap();
        assert!(matches!(
            reader.next_record(),
            Err(TfRecordError::Checksum { what: "data", offset }) if offset == second
        ));
        let cut = &file[..file.len() - 3];
        let mut reader = RecordReader::new(cut);
        reader.next_record().unwrap();
        assert!(matches!(
            reader.next_record(),
            Err(TfRecordError::Truncated { offset }) if offset == second
        ));
        let mut bad_length = file.clone();
        bad_length[0] ^= 1;
        assert!(matches!(
            RecordReader::new(bad_length.as_slice()).next_record(),
            Err(TfRecordError::Checksum {
                what: "length",
                offset: 0
            })
        ));
    }
}
