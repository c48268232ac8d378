//! A minimal TensorBoard event-file reader: TFRecord framing with both CRC32C checks, and
//! hand-written protobuf decoding of the few `Event`/`Summary` fields that scalars use.
//!
//! TFRecord framing, per record:
//! `u64 length (LE) | u32 masked_crc32c(length bytes) | data | u32 masked_crc32c(data)`.
//!
//! Protobuf fields read (tensorflow/core/util/event.proto and framework/summary.proto;
//! the same numbers are in `tensorboard-proto`):
//! - `Event`: `wall_time = 1` (double), `step = 2` (int64), `summary = 5` (Summary);
//! - `Summary`: `value = 1` (repeated Value);
//! - `Summary.Value`: `tag = 1` (string), `simple_value = 2` (float).
//!
//! Scalars written the TF2 way (as a `tensor`, field 8, instead of `simple_value`) are
//! skipped; our writer and PyTorch's `add_scalar` both write `simple_value`.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};

/// One scalar summary value read from an event file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScalarEvent {
    /// `Event.step`.
    pub step: i64,
    /// `Event.wall_time`: seconds since the Unix epoch, set by the writer.
    pub wall_time: f64,
    /// `Summary.Value.tag`, e.g. `critic/q_mean`.
    pub tag: String,
    /// `Summary.Value.simple_value` (TensorBoard stores scalars as `f32`).
    pub value: f32,
}

/// Which checksum of a TFRecord failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrcPart {
    /// The masked CRC32C of the 8 length bytes.
    Length,
    /// The masked CRC32C of the record data.
    Data,
}

/// A TFRecord checksum did not match: the file is corrupt (or was not written as TFRecord).
///
/// Returned inside `anyhow::Error`; find it with `err.downcast_ref::<CrcMismatch>()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrcMismatch {
    /// File that was read.
    pub path: PathBuf,
    /// Byte offset of the record's first byte.
    pub record_offset: u64,
    /// Which of the two checksums failed.
    pub part: CrcPart,
    /// Checksum stored in the file.
    pub stored: u32,
    /// Checksum computed from the bytes read.
    pub computed: u32,
}

impl fmt::Display for CrcMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let part = match self.part {
            CrcPart::Length => "length",
            CrcPart::Data => "data",
        };
        write!(
            f,
            "CRC mismatch in the {part} of the record at byte {} of {}: stored {:#010x}, computed {:#010x}",
            self.record_offset,
            self.path.display(),
            self.stored,
            self.computed
        )
    }
}

impl std::error::Error for CrcMismatch {}

/// CRC32C (Castagnoli, reflected polynomial 0x82F63B78) lookup table, built at compile time.
const CRC32C_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0x82F6_3B78 } else { crc >> 1 };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

/// CRC32C (Castagnoli) of `data`, as used by TFRecord.
pub fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc = CRC32C_TABLE[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

/// TFRecord's masked CRC: `((crc >> 15) | (crc << 17)) + 0xa282ead8` (wrapping).
pub fn masked_crc32c(data: &[u8]) -> u32 {
    let crc = crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// Splits TFRecord `bytes` into record payloads, checking both CRCs of every record.
/// A file that ends inside a record is an error (a file still being written can).
fn split_records<'a>(bytes: &'a [u8], path: &Path) -> Result<Vec<&'a [u8]>> {
    let mut records = Vec::new();
    let mut pos = 0usize;
    while pos < bytes.len() {
        let rest = &bytes[pos..];
        ensure!(rest.len() >= 12, "{} ends inside the header of the record at byte {pos}", path.display());
        let len_bytes = &rest[..8];
        let stored = u32::from_le_bytes(rest[8..12].try_into().expect("4 bytes"));
        let computed = masked_crc32c(len_bytes);
        if stored != computed {
            return Err(CrcMismatch {
                path: path.to_path_buf(),
                record_offset: pos as u64,
                part: CrcPart::Length,
                stored,
                computed,
            }
            .into());
        }
        let len = u64::from_le_bytes(len_bytes.try_into().expect("8 bytes"));
        let len =
            usize::try_from(len).ok().filter(|&l| l <= rest.len() - 12 && rest.len() - 12 - l >= 4).with_context(
                || format!("{} ends inside the record at byte {pos} ({len} data bytes announced)", path.display()),
            )?;
        let data = &rest[12..12 + len];
        let stored = u32::from_le_bytes(rest[12 + len..16 + len].try_into().expect("4 bytes"));
        let computed = masked_crc32c(data);
        if stored != computed {
            return Err(CrcMismatch {
                path: path.to_path_buf(),
                record_offset: pos as u64,
                part: CrcPart::Data,
                stored,
                computed,
            }
            .into());
        }
        records.push(data);
        pos += 16 + len;
    }
    Ok(records)
}

/// Reads every record payload of a TFRecord file, checking both CRCs of each.
pub fn read_records(path: impl AsRef<Path>) -> Result<Vec<Vec<u8>>> {
    let path = path.as_ref();
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(split_records(&bytes, path)?.into_iter().map(<[u8]>::to_vec).collect())
}

/// Reads the scalar summaries of one event file, in file order. Events without scalar
/// values (the `file_version` header, images, histograms) are skipped.
pub fn read_scalars(path: impl AsRef<Path>) -> Result<Vec<ScalarEvent>> {
    let path = path.as_ref();
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for (i, record) in split_records(&bytes, path)?.into_iter().enumerate() {
        decode_event(record, &mut out).with_context(|| format!("decoding event {i} of {}", path.display()))?;
    }
    Ok(out)
}

/// Reads the scalars of every event file under `dir` (see [`find_event_files`]), file
/// after file.
pub fn read_scalars_in_dir(dir: impl AsRef<Path>) -> Result<Vec<ScalarEvent>> {
    let mut out = Vec::new();
    for file in find_event_files(dir)? {
        out.extend(read_scalars(&file)?);
    }
    Ok(out)
}

/// Event files under `dir`, searched recursively (TensorBoard treats sub-directories as
/// runs): regular files whose name contains `tfevents`, sorted by path. The names embed
/// the creation second, so within a directory this is creation order.
pub fn find_event_files(dir: impl AsRef<Path>) -> Result<Vec<PathBuf>> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                walk(&entry.path(), out)?;
            } else if kind.is_file() && entry.file_name().to_string_lossy().contains("tfevents") {
                out.push(entry.path());
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir.as_ref(), &mut out)?;
    out.sort();
    Ok(out)
}

/// One decoded protobuf field value, by wire type.
#[derive(Debug, Clone, Copy)]
enum Field<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    Fixed32(u32),
}

/// Reads `(field number, value)` pairs from a protobuf message.
struct ProtoReader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> ProtoReader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        ensure!(self.buf.len() - self.pos >= n, "protobuf message ends early");
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn varint(&mut self) -> Result<u64> {
        let mut value = 0u64;
        for i in 0..10 {
            let b = self.take(1)?[0];
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        bail!("protobuf varint longer than 10 bytes")
    }

    fn next_field(&mut self) -> Result<Option<(u64, Field<'a>)>> {
        if self.pos == self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let number = key >> 3;
        ensure!(number != 0, "protobuf field number 0");
        let field = match key & 7 {
            0 => Field::Varint(self.varint()?),
            1 => Field::Fixed64(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes"))),
            2 => {
                let len = usize::try_from(self.varint()?).context("protobuf length too large")?;
                Field::Bytes(self.take(len)?)
            }
            5 => Field::Fixed32(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes"))),
            w => bail!("unsupported protobuf wire type {w} (field {number})"),
        };
        Ok(Some((number, field)))
    }
}

/// Decodes one `Event` and appends its scalar summary values to `out`.
fn decode_event(bytes: &[u8], out: &mut Vec<ScalarEvent>) -> Result<()> {
    let mut step = 0i64;
    let mut wall_time = 0f64;
    let mut summaries = Vec::new();
    let mut reader = ProtoReader::new(bytes);
    while let Some((number, field)) = reader.next_field()? {
        match (number, field) {
            (1, Field::Fixed64(bits)) => wall_time = f64::from_bits(bits),
            (2, Field::Varint(v)) => step = v as i64,
            (5, Field::Bytes(b)) => summaries.push(b),
            (1 | 2 | 5, other) => {
                bail!("Event field {number} has an unexpected wire type: {other:?}")
            }
            _ => {}
        }
    }
    for summary in summaries {
        let mut reader = ProtoReader::new(summary);
        while let Some((number, field)) = reader.next_field()? {
            match (number, field) {
                (1, Field::Bytes(value)) => {
                    if let Some((tag, value)) = decode_value(value)? {
                        out.push(ScalarEvent { step, wall_time, tag, value });
                    }
                }
                (1, other) => bail!("Summary field 1 has an unexpected wire type: {other:?}"),
                _ => {}
            }
        }
    }
    Ok(())
}

/// Decodes one `Summary.Value`; `None` when it holds no `simple_value`.
fn decode_value(bytes: &[u8]) -> Result<Option<(String, f32)>> {
    let mut tag = String::new();
    let mut simple_value = None;
    let mut reader = ProtoReader::new(bytes);
    while let Some((number, field)) = reader.next_field()? {
        match (number, field) {
            (1, Field::Bytes(b)) => tag = String::from_utf8(b.to_vec()).context("Summary.Value.tag is not UTF-8")?,
            (2, Field::Fixed32(bits)) => simple_value = Some(f32::from_bits(bits)),
            (1 | 2, other) => {
                bail!("Summary.Value field {number} has an unexpected wire type: {other:?}")
            }
            _ => {}
        }
    }
    Ok(simple_value.map(|v| (tag, v)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        // The CRC-32C check value from the catalogue of parametrised CRC algorithms.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
    }

    /// Encodes one record in TFRecord framing.
    fn frame(data: &[u8]) -> Vec<u8> {
        let len = (data.len() as u64).to_le_bytes();
        let mut out = len.to_vec();
        out.extend(masked_crc32c(&len).to_le_bytes());
        out.extend(data);
        out.extend(masked_crc32c(data).to_le_bytes());
        out
    }

    #[test]
    fn hand_encoded_event_decodes_to_its_scalar() {
        // Event { wall_time: 2.5, step: 300, summary { value { tag: "a/b", simple_value: 1.5 } } }
        let value = [&[0x0a, 3][..], b"a/b", &[0x15], &1.5f32.to_le_bytes()].concat();
        let summary = [&[0x0a, value.len() as u8][..], &value].concat();
        let event = [
            &[0x09][..],
            &2.5f64.to_le_bytes(),
            &[0x10, 0xac, 0x02], // step 300 as a varint
            &[0x2a, summary.len() as u8],
            &summary,
        ]
        .concat();
        let framed = frame(&event);
        let records = split_records(&framed, Path::new("mem")).unwrap();
        let mut out = Vec::new();
        decode_event(records[0], &mut out).unwrap();
        assert_eq!(out, vec![ScalarEvent { step: 300, wall_time: 2.5, tag: "a/b".into(), value: 1.5 }]);
    }

    #[test]
    fn file_ending_inside_a_record_is_an_error() {
        let bytes = frame(b"hello");
        for cut in [3, 12, bytes.len() - 1] {
            let err = split_records(&bytes[..cut], Path::new("mem")).unwrap_err();
            assert!(err.to_string().contains("ends inside"), "{err}");
        }
    }
}
