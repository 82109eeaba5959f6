//! Byte layouts (see the crate doc for the spec): segment file names, the segment header, the
//! record frame and the positions file. Pure functions over `&[u8]`, no IO.

use std::collections::BTreeMap;

use crate::crc::{Crc32c, crc32c};

/// Magic at the start of every segment file.
pub(crate) const SEGMENT_MAGIC: [u8; 4] = *b"ASLG";
/// Magic at the start of the positions file.
pub(crate) const POSITIONS_MAGIC: [u8; 4] = *b"ASLP";
/// Version of both file formats.
pub(crate) const FORMAT_VERSION: u32 = 1;
/// Bytes in a segment header: magic, version, first LSN.
pub const SEGMENT_HEADER_LEN: u64 = 16;
/// Bytes in a record header: length, CRC.
pub const RECORD_HEADER_LEN: u64 = 8;
/// Name of the positions file.
pub(crate) const POSITIONS_FILE: &str = "positions";
/// Name of the positions file while it is being written.
pub(crate) const POSITIONS_TMP: &str = "positions.tmp";
/// Longest reader position name, in bytes.
pub const MAX_POSITION_NAME: usize = 255;

/// `{first_lsn:020}.seg`.
pub(crate) fn segment_name(first_lsn: u64) -> String {
    format!("{first_lsn:020}.seg")
}

/// The first LSN of a segment file name, or `None` if `name` is not a segment name.
pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

pub(crate) fn encode_segment_header(first_lsn: u64) -> [u8; SEGMENT_HEADER_LEN as usize] {
    let mut h = [0u8; SEGMENT_HEADER_LEN as usize];
    h[0..4].copy_from_slice(&SEGMENT_MAGIC);
    h[4..8].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[8..16].copy_from_slice(&first_lsn.to_le_bytes());
    h
}

/// Checks a complete segment header against the LSN its file name promises.
pub(crate) fn check_segment_header(h: &[u8], expected_lsn: u64) -> Result<(), String> {
    if h.len() < SEGMENT_HEADER_LEN as usize {
        return Err(format!("segment header is {} bytes, expected 16", h.len()));
    }
    if h[0..4] != SEGMENT_MAGIC {
        return Err(format!(
            "bad magic {:02x?}, expected {:02x?} (\"ASLG\")",
            &h[0..4],
            SEGMENT_MAGIC
        ));
    }
    let version = u32::from_le_bytes(h[4..8].try_into().unwrap());
    if version != FORMAT_VERSION {
        return Err(format!(
            "unsupported segment format version {version} (this build reads {FORMAT_VERSION})"
        ));
    }
    let lsn = u64::from_le_bytes(h[8..16].try_into().unwrap());
    if lsn != expected_lsn {
        return Err(format!("header says first LSN {lsn} but the file name says {expected_lsn}"));
    }
    Ok(())
}

/// Appends one record frame (header + payload) to `out`.
pub(crate) fn encode_record(payload: &[u8], out: &mut Vec<u8>) {
    let len = u32::try_from(payload.len()).expect("record length checked against max_record_size");
    let len = len.to_le_bytes();
    let mut c = Crc32c::new();
    c.update(&len);
    c.update(payload);
    out.extend_from_slice(&len);
    out.extend_from_slice(&c.finish().to_le_bytes());
    out.extend_from_slice(payload);
}

/// What [`parse_record`] found at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Frame {
    /// A whole, valid record: its payload occupies `buf[8..8 + payload_len]`.
    Valid { payload_len: usize },
    /// The buffer ends before the record does; `total` is the full frame length if the header
    /// was complete (so the caller knows how much to read), else `None`.
    Incomplete { total: Option<u64> },
    /// The bytes cannot be a record written by this crate.
    Malformed(String),
}

/// Parses the record frame at the start of `buf` (which may be cut short anywhere).
pub(crate) fn parse_record(buf: &[u8], max_record_size: usize) -> Frame {
    if buf.len() < RECORD_HEADER_LEN as usize {
        return Frame::Incomplete { total: None };
    }
    let len_bytes: [u8; 4] = buf[0..4].try_into().unwrap();
    let len = u32::from_le_bytes(len_bytes) as usize;
    if len > max_record_size {
        return Frame::Malformed(format!(
            "record length {len} exceeds the maximum record size {max_record_size}"
        ));
    }
    let total = RECORD_HEADER_LEN as usize + len;
    if buf.len() < total {
        return Frame::Incomplete { total: Some(total as u64) };
    }
    let stored = u32::from_le_bytes(buf[4..8].try_into().unwrap());
    let mut c = Crc32c::new();
    c.update(&len_bytes);
    c.update(&buf[8..total]);
    let actual = c.finish();
    if stored != actual {
        return Frame::Malformed(format!(
            "CRC mismatch in a {len}-byte record: stored {stored:#010x}, computed {actual:#010x}"
        ));
    }
    Frame::Valid { payload_len: len }
}

/// Encodes the positions file: magic, version, count (u32), then per position (sorted by name)
/// name length (u16), name (UTF-8), LSN (u64), and finally a CRC-32C of everything before it.
pub(crate) fn encode_positions(positions: &BTreeMap<String, u64>) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + positions.len() * 32);
    out.extend_from_slice(&POSITIONS_MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(positions.len() as u32).to_le_bytes());
    for (name, lsn) in positions {
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&lsn.to_le_bytes());
    }
    let crc = crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes the positions file; the error says what is wrong with it.
pub(crate) fn decode_positions(buf: &[u8]) -> Result<BTreeMap<String, u64>, String> {
    if buf.len() < 16 {
        return Err(format!("file is {} bytes, shorter than the 16-byte minimum", buf.len()));
    }
    let (body, crc) = buf.split_at(buf.len() - 4);
    let stored = u32::from_le_bytes(crc.try_into().unwrap());
    let actual = crc32c(body);
    if stored != actual {
        return Err(format!("CRC mismatch: stored {stored:#010x}, computed {actual:#010x}"));
    }
    if body[0..4] != POSITIONS_MAGIC {
        return Err(format!("bad magic {:02x?}, expected \"ASLP\"", &body[0..4]));
    }
    let version = u32::from_le_bytes(body[4..8].try_into().unwrap());
    if version != FORMAT_VERSION {
        return Err(format!("unsupported positions format version {version}"));
    }
    let count = u32::from_le_bytes(body[8..12].try_into().unwrap());
    let mut rest = &body[12..];
    let mut out = BTreeMap::new();
    for i in 0..count {
        let short = || format!("entry {i} of {count} is cut short");
        if rest.len() < 2 {
            return Err(short());
        }
        let n = u16::from_le_bytes([rest[0], rest[1]]) as usize;
        if rest.len() < 2 + n + 8 {
            return Err(short());
        }
        let name = std::str::from_utf8(&rest[2..2 + n])
            .map_err(|_| format!("entry {i}: name is not UTF-8"))?;
        let lsn = u64::from_le_bytes(rest[2 + n..2 + n + 8].try_into().unwrap());
        out.insert(name.to_owned(), lsn);
        rest = &rest[2 + n + 8..];
    }
    if !rest.is_empty() {
        return Err(format!("{} unexpected bytes after the last entry", rest.len()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_round_trip_and_reject_others() {
        assert_eq!(segment_name(1), "00000000000000000001.seg");
        assert_eq!(parse_segment_name(&segment_name(u64::MAX)), Some(u64::MAX));
        for bad in ["1.seg", "0000000000000000000a.seg", "00000000000000000001.tmp", "positions"] {
            assert_eq!(parse_segment_name(bad), None, "{bad}");
        }
        assert_eq!(parse_segment_name("99999999999999999999.seg"), None); // > u64::MAX
    }

    #[test]
    fn header_checks() {
        let h = encode_segment_header(42);
        assert!(check_segment_header(&h, 42).is_ok());
        assert!(check_segment_header(&h, 43).unwrap_err().contains("file name says 43"));
        let mut bad = h;
        bad[0] = b'X';
        assert!(check_segment_header(&bad, 42).unwrap_err().contains("magic"));
    }

    #[test]
    fn record_frames_parse_and_distinguish_incomplete_from_malformed() {
        let mut buf = Vec::new();
        encode_record(b"hello", &mut buf);
        assert_eq!(buf.len(), 13);
        assert_eq!(parse_record(&buf, 100), Frame::Valid { payload_len: 5 });
        assert_eq!(parse_record(&buf[..3], 100), Frame::Incomplete { total: None });
        assert_eq!(parse_record(&buf[..12], 100), Frame::Incomplete { total: Some(13) });
        assert!(matches!(parse_record(&buf, 4), Frame::Malformed(m) if m.contains("exceeds")));
        buf[10] ^= 1;
        assert!(matches!(parse_record(&buf, 100), Frame::Malformed(m) if m.contains("CRC")));
        // A zero-filled region is never a valid empty record.
        assert!(matches!(parse_record(&[0u8; 8], 100), Frame::Malformed(_)));
        let mut empty = Vec::new();
        encode_record(b"", &mut empty);
        assert_eq!(parse_record(&empty, 100), Frame::Valid { payload_len: 0 });
    }

    #[test]
    fn positions_round_trip_and_detect_damage() {
        let mut p = BTreeMap::new();
        assert_eq!(decode_positions(&encode_positions(&p)).unwrap(), p);
        p.insert("sender".to_owned(), 17);
        p.insert("décisions".to_owned(), u64::MAX);
        let enc = encode_positions(&p);
        assert_eq!(decode_positions(&enc).unwrap(), p);
        for i in 0..enc.len() {
            let mut bad = enc.clone();
            bad[i] ^= 0x20;
            assert!(decode_positions(&bad).is_err(), "flip at {i}");
        }
        assert!(decode_positions(&enc[..enc.len() - 1]).is_err());
    }
}
