//! WAL segment files: naming, listing and replay.
//!
//! A segment is named after the LSN of its first record
//! (`00000000000000000042.wal`) and holds frames in increasing LSN order.
//! Replay tolerates a frame cut short at the very end of the newest segment
//! (a crash mid-write: it is truncated away with a warning) and refuses any
//! other damage with an error that names the file and offset.

use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::path::{Path, PathBuf};

use super::WalError;
use super::frame::{self, HEADER_LEN, HeaderProblem};

const SEGMENT_SUFFIX: &str = ".wal";

/// One segment file on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentFile {
    /// LSN of the first record it holds (or will hold).
    pub first_lsn: u64,
    /// Its path.
    pub path: PathBuf,
}

/// The file name of the segment starting at `first_lsn`.
pub fn segment_path(dir: &Path, first_lsn: u64) -> PathBuf {
    dir.join(format!("{first_lsn:020}{SEGMENT_SUFFIX}"))
}

/// Lists the segments in `dir`, oldest first. Other files are ignored.
pub fn list_segments(dir: &Path) -> Result<Vec<SegmentFile>, WalError> {
    let mut segments = Vec::new();
    let entries = fs::read_dir(dir).map_err(|source| WalError::io("list", dir, source))?;
    for entry in entries {
        let entry = entry.map_err(|source| WalError::io("list", dir, source))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(stem) = name.strip_suffix(SEGMENT_SUFFIX) else {
            continue;
        };
        if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(first_lsn) = stem.parse::<u64>() {
            segments.push(SegmentFile {
                first_lsn,
                path: entry.path(),
            });
        }
    }
    segments.sort_by_key(|segment| segment.first_lsn);
    Ok(segments)
}

/// What replaying the log found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplaySummary {
    /// Highest LSN read (0 when the log is empty).
    pub last_lsn: u64,
    /// Records handed to the callback.
    pub records: u64,
    /// Bytes of a torn final frame that were cut off, if any.
    pub truncated_bytes: u64,
    /// Segments read.
    pub segments: usize,
}

/// How a read of the log treats its end.
#[derive(Clone, Copy)]
enum ReadMode {
    /// At start: a torn frame at the end of the newest segment is cut off.
    Recover,
    /// While a writer appends: records past `upto` are not read, and a
    /// frame not whole yet ends the read; nothing is changed on disk.
    Live { upto: u64 },
}

/// Reads every record of every segment in `dir` in LSN order and hands it
/// to `apply`. A torn tail of the newest segment is truncated; any other
/// damage stops replay with [`WalError::Corrupt`], a gap in LSNs with
/// [`WalError::Gap`].
pub fn replay<F>(dir: &Path, apply: F) -> Result<ReplaySummary, WalError>
where
    F: FnMut(u64, &[u8]) -> Result<(), WalError>,
{
    read_log(dir, ReadMode::Recover, apply)
}

/// Reads the records with LSNs up to `upto` while the log is live (a
/// writer may be appending): nothing is truncated, and a frame that is not
/// whole yet at the end of the newest segment ends the read. Other damage
/// and gaps are errors, as in [`replay`].
pub fn read_live<F>(dir: &Path, upto: u64, apply: F) -> Result<ReplaySummary, WalError>
where
    F: FnMut(u64, &[u8]) -> Result<(), WalError>,
{
    read_log(dir, ReadMode::Live { upto }, apply)
}

fn read_log<F>(dir: &Path, mode: ReadMode, mut apply: F) -> Result<ReplaySummary, WalError>
where
    F: FnMut(u64, &[u8]) -> Result<(), WalError>,
{
    let segments = list_segments(dir)?;
    let mut summary = ReplaySummary {
        segments: segments.len(),
        ..ReplaySummary::default()
    };
    for (index, segment) in segments.iter().enumerate() {
        if let ReadMode::Live { upto } = mode
            && segment.first_lsn > upto
        {
            break;
        }
        let is_newest = index + 1 == segments.len();
        if !read_segment(segment, is_newest, mode, &mut summary, &mut apply)? {
            break;
        }
    }
    Ok(summary)
}

/// Reads one segment; returns whether the read goes on to the next.
fn read_segment<F>(
    segment: &SegmentFile,
    is_newest: bool,
    mode: ReadMode,
    summary: &mut ReplaySummary,
    apply: &mut F,
) -> Result<bool, WalError>
where
    F: FnMut(u64, &[u8]) -> Result<(), WalError>,
{
    let path = &segment.path;
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut file| file.read_to_end(&mut bytes))
        .map_err(|source| WalError::io("read", path, source))?;

    let mut offset = 0usize;
    while offset < bytes.len() {
        match next_frame(&bytes, offset) {
            Ok((lsn, body_range)) => {
                if let ReadMode::Live { upto } = mode
                    && lsn > upto
                {
                    return Ok(false);
                }
                check_continuity(segment, offset as u64, lsn, summary)?;
                // An empty frame stands for a record whose write failed
                // (never acknowledged): it keeps the LSNs continuous.
                if !body_range.is_empty() {
                    apply(lsn, &bytes[body_range.clone()])?;
                }
                summary.last_lsn = lsn;
                summary.records += 1;
                offset = body_range.end;
            }
            Err(damage) => {
                // After a power loss only the last sync group can be
                // damaged, anywhere in its bytes: damage in the newest
                // segment is a torn tail unless a later group follows.
                let torn = is_newest && !synced_data_follows(&bytes, offset, summary.last_lsn);
                if !torn {
                    return Err(WalError::Corrupt {
                        path: path.clone(),
                        offset: offset as u64,
                        reason: damage.describe().to_string(),
                    });
                }
                if let ReadMode::Live { .. } = mode {
                    return Ok(false); // Still being written.
                }
                let cut = (bytes.len() - offset) as u64;
                tracing::warn!(
                    path = %path.display(),
                    offset,
                    bytes_cut = cut,
                    reason = damage.describe(),
                    "WAL ends with a torn frame from an interrupted write; truncating it"
                );
                truncate_file(path, offset as u64)?;
                summary.truncated_bytes += cut;
                break;
            }
        }
    }
    Ok(true)
}

/// Checks that the frame at `offset` of `segment`, holding `lsn`, comes
/// right after the last record read (LSNs run on without a gap from the
/// oldest kept segment), and that a segment starts with the LSN it is
/// named after.
fn check_continuity(
    segment: &SegmentFile,
    offset: u64,
    lsn: u64,
    summary: &ReplaySummary,
) -> Result<(), WalError> {
    if summary.records > 0 && lsn != summary.last_lsn + 1 {
        return Err(WalError::Gap {
            path: segment.path.clone(),
            offset,
            expected: summary.last_lsn + 1,
            found: lsn,
        });
    }
    if offset == 0 && lsn != segment.first_lsn {
        return Err(WalError::Corrupt {
            path: segment.path.clone(),
            offset,
            reason: format!(
                "the segment is named after LSN {} but starts with LSN {lsn} (renamed?)",
                segment.first_lsn
            ),
        });
    }
    Ok(())
}

/// What is wrong with the bytes at some offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FrameDamage {
    /// Fewer bytes than a header remain.
    ShortHeader,
    /// The header checksum does not match.
    BadHeader,
    /// The header is intact but its length is impossible.
    BadLength,
    /// The header is intact but the body runs past the end of the file.
    ShortBody,
    /// The body checksum does not match, and the frame ends the file.
    BadBodyAtEnd,
    /// The body checksum does not match, and more data follows.
    BadBody,
}

impl FrameDamage {
    fn describe(self) -> &'static str {
        match self {
            FrameDamage::ShortHeader => "the file ends inside a frame header",
            FrameDamage::BadHeader => "frame header checksum mismatch",
            FrameDamage::BadLength => "frame length is impossible",
            FrameDamage::ShortBody => "the file ends inside a frame body",
            FrameDamage::BadBodyAtEnd => "checksum mismatch in the final frame",
            FrameDamage::BadBody => "frame body checksum mismatch",
        }
    }
}

/// Whether a whole frame that starts a sync group, with an LSN above
/// `after`, begins anywhere past `damaged`: then the damage is followed by
/// data synced after it, so it is not the torn tail of a power loss.
fn synced_data_follows(bytes: &[u8], damaged: usize, after: u64) -> bool {
    (damaged + 1..bytes.len()).any(|offset| {
        matches!(next_frame_header(bytes, offset),
            Ok((header, _)) if header.starts_sync_group && header.lsn > after)
    })
}

/// Parses the frame at `offset`: its LSN and the byte range of its body.
fn next_frame(bytes: &[u8], offset: usize) -> Result<(u64, std::ops::Range<usize>), FrameDamage> {
    next_frame_header(bytes, offset).map(|(header, body)| (header.lsn, body))
}

/// Parses and checks the frame at `offset`: its header and body range.
fn next_frame_header(
    bytes: &[u8],
    offset: usize,
) -> Result<(frame::FrameHeader, std::ops::Range<usize>), FrameDamage> {
    let rest = &bytes[offset..];
    let Some(header_bytes) = rest.get(..HEADER_LEN) else {
        return Err(FrameDamage::ShortHeader);
    };
    let mut header_array = [0u8; HEADER_LEN];
    header_array.copy_from_slice(header_bytes);
    let header = frame::decode_header(&header_array).map_err(|problem| match problem {
        HeaderProblem::BadChecksum => FrameDamage::BadHeader,
        HeaderProblem::BadLength => FrameDamage::BadLength,
    })?;
    let body_start = offset + HEADER_LEN;
    let body_end = body_start + header.body_len;
    if body_end > bytes.len() {
        return Err(FrameDamage::ShortBody);
    }
    if frame::body_checksum(&bytes[body_start..body_end]) != header.body_crc {
        return Err(if body_end == bytes.len() {
            FrameDamage::BadBodyAtEnd
        } else {
            FrameDamage::BadBody
        });
    }
    Ok((header, body_start..body_end))
}

fn truncate_file(path: &Path, length: u64) -> Result<(), WalError> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|source| WalError::io("open for truncation", path, source))?;
    file.set_len(length)
        .and_then(|()| file.sync_all())
        .map_err(|source| WalError::io("truncate", path, source))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::frame::{body_checksum, encode_frame};

    fn write_segment(dir: &Path, first_lsn: u64, bodies: &[&[u8]]) -> PathBuf {
        let mut bytes = Vec::new();
        for (index, body) in bodies.iter().enumerate() {
            encode_frame(
                &mut bytes,
                first_lsn + index as u64,
                body,
                body_checksum(body),
                true,
            );
        }
        let path = segment_path(dir, first_lsn);
        fs::write(&path, bytes).unwrap();
        path
    }

    type Records = Vec<(u64, Vec<u8>)>;

    fn collect(dir: &Path) -> Result<(Records, ReplaySummary), WalError> {
        let mut records = Vec::new();
        let summary = replay(dir, |lsn, body| {
            records.push((lsn, body.to_vec()));
            Ok(())
        })?;
        Ok((records, summary))
    }

    #[test]
    fn replays_all_segments_in_order() {
        let dir = tempfile::tempdir().unwrap();
        write_segment(dir.path(), 1, &[b"a", b"b"]);
        write_segment(dir.path(), 3, &[b"c"]);
        fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        let (records, summary) = collect(dir.path()).unwrap();
        assert_eq!(
            records,
            vec![(1, b"a".to_vec()), (2, b"b".to_vec()), (3, b"c".to_vec())]
        );
        assert_eq!(summary.last_lsn, 3);
        assert_eq!(summary.truncated_bytes, 0);
    }

    #[test]
    fn torn_tail_of_newest_segment_is_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_segment(dir.path(), 1, &[b"first", b"second record"]);
        let full = fs::metadata(&path).unwrap().len();
        for cut in [1u64, 5, 13, 20, 25] {
            let copy = tempfile::tempdir().unwrap();
            let copy_path = segment_path(copy.path(), 1);
            let bytes = fs::read(&path).unwrap();
            fs::write(&copy_path, &bytes[..(full - cut) as usize]).unwrap();
            let (records, summary) = collect(copy.path()).unwrap();
            assert_eq!(records, vec![(1, b"first".to_vec())], "cut {cut}");
            assert!(summary.truncated_bytes > 0);
            let first_frame = (HEADER_LEN + 5) as u64;
            assert_eq!(fs::metadata(&copy_path).unwrap().len(), first_frame);
            // Replaying again is clean.
            let (_, again) = collect(copy.path()).unwrap();
            assert_eq!(again.truncated_bytes, 0);
        }
    }

    #[test]
    fn damage_in_the_middle_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_segment(dir.path(), 1, &[b"first", b"second", b"third"]);
        let mut bytes = fs::read(&path).unwrap();
        // Flip a byte of the second frame's body.
        let second_body = 2 * HEADER_LEN + 5;
        bytes[second_body] ^= 0x40;
        fs::write(&path, &bytes).unwrap();
        let error = collect(dir.path()).unwrap_err();
        assert!(matches!(error, WalError::Corrupt { .. }), "{error}");
        // Nothing was truncated.
        assert_eq!(fs::metadata(&path).unwrap().len(), bytes.len() as u64);
    }

    #[test]
    fn damaged_length_is_not_mistaken_for_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_segment(dir.path(), 1, &[b"first", b"second", b"third"]);
        let mut bytes = fs::read(&path).unwrap();
        let second_header = HEADER_LEN + 5;
        bytes[second_header + 1] ^= 0x01; // length grows past the end of the file
        fs::write(&path, &bytes).unwrap();
        assert!(matches!(collect(dir.path()), Err(WalError::Corrupt { .. })));
    }

    #[test]
    fn damage_in_an_older_segment_is_an_error_even_at_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let old = write_segment(dir.path(), 1, &[b"first"]);
        write_segment(dir.path(), 2, &[b"second"]);
        let bytes = fs::read(&old).unwrap();
        fs::write(&old, &bytes[..bytes.len() - 2]).unwrap();
        assert!(matches!(collect(dir.path()), Err(WalError::Corrupt { .. })));
    }

    #[test]
    fn a_missing_or_reordered_middle_segment_stops_replay() {
        // Segments 1..=2, 3..=4, 5..=6: the middle one removed.
        let dir = tempfile::tempdir().unwrap();
        write_segment(dir.path(), 1, &[b"a", b"b"]);
        let middle = write_segment(dir.path(), 3, &[b"c", b"d"]);
        let last = write_segment(dir.path(), 5, &[b"e", b"f"]);
        fs::remove_file(&middle).unwrap();
        match collect(dir.path()) {
            Err(WalError::Gap {
                path,
                offset,
                expected,
                found,
            }) => {
                assert_eq!((path, offset, expected, found), (last.clone(), 0, 3, 5));
            }
            other => panic!("expected a gap, got {other:?}"),
        }
        let message = collect(dir.path()).unwrap_err().to_string();
        assert!(message.contains("LSN 3 should follow"), "{message}");
        // Nothing was truncated or removed.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2);

        // Two segments swapped by renaming: the names no longer match.
        let dir = tempfile::tempdir().unwrap();
        let first = write_segment(dir.path(), 1, &[b"a", b"b"]);
        let second = write_segment(dir.path(), 3, &[b"c", b"d"]);
        let parked = dir.path().join("parked");
        fs::rename(&first, &parked).unwrap();
        fs::rename(&second, &first).unwrap();
        fs::rename(&parked, &second).unwrap();
        assert!(matches!(
            collect(dir.path()),
            Err(WalError::Corrupt { .. } | WalError::Gap { .. })
        ));

        // A gap inside one segment (a frame cut out of the middle).
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = Vec::new();
        for lsn in [1u64, 2, 4] {
            encode_frame(&mut bytes, lsn, b"x", body_checksum(b"x"), true);
        }
        fs::write(segment_path(dir.path(), 1), bytes).unwrap();
        assert!(matches!(
            collect(dir.path()),
            Err(WalError::Gap {
                expected: 3,
                found: 4,
                ..
            })
        ));
    }

    #[test]
    fn a_live_read_stops_at_its_bound_and_never_cuts_a_frame_being_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_segment(dir.path(), 1, &[b"a", b"b", b"c"]);
        let mut bytes = fs::read(&path).unwrap();
        let whole = bytes.len();
        // Half of a fourth frame: a writer in the middle of appending it.
        let mut next = Vec::new();
        encode_frame(&mut next, 4, b"dddd", body_checksum(b"dddd"), true);
        bytes.extend_from_slice(&next[..next.len() / 2]);
        fs::write(&path, &bytes).unwrap();
        let mut seen = Vec::new();
        let summary = read_live(dir.path(), 2, |lsn, _| {
            seen.push(lsn);
            Ok(())
        })
        .unwrap();
        assert_eq!((seen.clone(), summary.last_lsn), (vec![1, 2], 2));
        seen.clear();
        read_live(dir.path(), 10, |lsn, _| {
            seen.push(lsn);
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, [1, 2, 3]);
        assert_eq!(fs::read(&path).unwrap().len(), bytes.len(), "nothing cut");
        assert!(bytes.len() > whole);
    }

    /// A segment of two sync groups of three frames each, as the writer
    /// lays them out (the first frame after a sync carries the mark);
    /// returns the bytes, where the second group starts, and the bodies.
    fn two_groups() -> (Vec<u8>, usize, Vec<Vec<u8>>) {
        let bodies: Vec<Vec<u8>> = (1..=6u8).map(|lsn| vec![lsn; 300]).collect();
        let mut bytes = Vec::new();
        let mut second = 0;
        for (index, body) in bodies.iter().enumerate() {
            if index == 3 {
                second = bytes.len();
            }
            let starts = index == 0 || index == 3;
            encode_frame(
                &mut bytes,
                index as u64 + 1,
                body,
                body_checksum(body),
                starts,
            );
        }
        (bytes, second, bodies)
    }

    #[test]
    fn power_loss_in_the_last_group_at_any_offset_keeps_every_synced_frame() {
        let (bytes, second, bodies) = two_groups();
        let window = 64;
        for offset in second..bytes.len() {
            let mut cut = bytes[..offset].to_vec();
            let mut zero_tail = bytes.clone();
            zero_tail[offset..].fill(0);
            let mut zero_window = bytes.clone();
            let end = (offset + window).min(bytes.len());
            zero_window[offset..end].fill(0);
            let mut garbage_window = bytes.clone();
            garbage_window[offset..end].fill(0xA5);
            for (name, damaged) in [
                ("cut", std::mem::take(&mut cut)),
                ("zero tail", zero_tail),
                ("zero window", zero_window),
                ("garbage window", garbage_window),
            ] {
                let dir = tempfile::tempdir().unwrap();
                let path = segment_path(dir.path(), 1);
                fs::write(&path, &damaged).unwrap();
                let (records, _) = collect(dir.path())
                    .unwrap_or_else(|error| panic!("{name} at {offset}: {error}"));
                assert!(records.len() >= 3, "{name} at {offset}: {}", records.len());
                for (index, (lsn, body)) in records.iter().enumerate() {
                    assert_eq!(*lsn, index as u64 + 1, "{name} at {offset}");
                    assert_eq!(body, &bodies[index], "{name} at {offset}");
                }
                // The damaged tail is gone: a second start is clean.
                let (again, summary) = collect(dir.path()).unwrap();
                assert_eq!(again, records, "{name} at {offset}");
                assert_eq!(summary.truncated_bytes, 0, "{name} at {offset}");
            }
        }
    }

    #[test]
    fn damage_in_a_synced_group_followed_by_a_later_group_is_an_error() {
        let (bytes, second, _) = two_groups();
        let window = 64;
        for offset in 0..second - window {
            let mut damaged = bytes.clone();
            damaged[offset..offset + window].fill(0);
            let dir = tempfile::tempdir().unwrap();
            let path = segment_path(dir.path(), 1);
            fs::write(&path, &damaged).unwrap();
            match collect(dir.path()) {
                Err(WalError::Corrupt { .. }) => {}
                other => panic!("zeroes at {offset}: expected an error, got {other:?}"),
            }
            assert_eq!(fs::read(&path).unwrap(), damaged, "nothing cut at {offset}");
        }
    }
}
