//! TensorBoard event files, written here: a TFRecord stream (per record: `u64` length, masked
//! CRC-32C of the length, the payload, masked CRC-32C of the payload) of `Event` protocol
//! buffers encoded by hand — the few fields scalars and images need.
//!
//! Written in-house because the crate used before (tensorboard-rs 0.5.9) panicked on any I/O
//! error in its writer thread and again when dropped: a full disk aborted the run instead of
//! stopping it with the OS error. Here every write returns its error.
//!
//! The `Event` fields used (tensorflow/core/util/event.proto, summary.proto): `Event.wall_time`
//! (1, double), `Event.step` (2, int64), `Event.file_version` (3, string), `Event.summary` (5);
//! `Summary.value` (1, repeated); `Summary.Value.tag` (1), `.simple_value` (2, float), `.image`
//! (4); `Summary.Image.height` (1), `.width` (2), `.colorspace` (3), `.encoded_image_string` (4).

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

use crate::tb_reader::masked_crc32c;

/// An open event file.
pub(crate) struct EventWriter {
    path: PathBuf,
    out: BufWriter<File>,
}

impl EventWriter {
    /// A new file `events.out.tfevents.{unix seconds}.{host}.{pid}.{n}` in `dir` (`n`: the first
    /// number that names no existing file, so a second writer never truncates the first),
    /// starting with the `brain.Event:2` version record.
    pub(crate) fn create(dir: &Path) -> Result<Self> {
        let secs = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let host = hostname();
        for n in 0.. {
            let path = dir.join(format!("events.out.tfevents.{secs:010}.{host}.{}.{n}", std::process::id()));
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => {
                    let mut w = Self { path, out: BufWriter::new(file) };
                    let mut event = event_head(wall_time(), 0);
                    put_bytes(&mut event, 3, b"brain.Event:2");
                    w.record(&event)?;
                    w.flush()?;
                    return Ok(w);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e).with_context(|| format!("creating TensorBoard event file {}", path.display())),
            }
        }
        unreachable!("some file number is free")
    }

    /// One event holding the scalars `(tag, value)` of `step`.
    pub(crate) fn scalars(&mut self, step: i64, scalars: &[(&str, f32)]) -> Result<()> {
        let mut summary = Vec::new();
        for (tag, value) in scalars {
            let mut v = Vec::new();
            put_bytes(&mut v, 1, tag.as_bytes());
            put_key(&mut v, 2, 5);
            v.extend_from_slice(&value.to_le_bytes());
            put_bytes(&mut summary, 1, &v);
        }
        self.summary(step, &summary)
    }

    /// One event holding an RGB image (`png`: its PNG encoding).
    pub(crate) fn image(&mut self, step: i64, tag: &str, width: usize, height: usize, png: &[u8]) -> Result<()> {
        let mut image = Vec::new();
        for (field, n) in [(1, height), (2, width), (3, 3)] {
            put_key(&mut image, field, 0);
            put_varint(&mut image, n as u64);
        }
        put_bytes(&mut image, 4, png);
        let mut v = Vec::new();
        put_bytes(&mut v, 1, tag.as_bytes());
        put_bytes(&mut v, 4, &image);
        let mut summary = Vec::new();
        put_bytes(&mut summary, 1, &v);
        self.summary(step, &summary)
    }

    /// Makes what was written durable to readers (the OS's buffers, not the disk).
    pub(crate) fn flush(&mut self) -> Result<()> {
        self.out.flush().with_context(|| format!("writing {}", self.path.display()))
    }

    fn summary(&mut self, step: i64, summary: &[u8]) -> Result<()> {
        let mut event = event_head(wall_time(), step);
        put_bytes(&mut event, 5, summary);
        self.record(&event)
    }

    /// One TFRecord frame.
    fn record(&mut self, payload: &[u8]) -> Result<()> {
        let len = (payload.len() as u64).to_le_bytes();
        let mut frame = Vec::with_capacity(payload.len() + 16);
        frame.extend_from_slice(&len);
        frame.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
        frame.extend_from_slice(payload);
        frame.extend_from_slice(&masked_crc32c(payload).to_le_bytes());
        self.out.write_all(&frame).with_context(|| format!("writing {}", self.path.display()))
    }
}

fn wall_time() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64()
}

/// An `Event` with its wall time and step.
fn event_head(wall_time: f64, step: i64) -> Vec<u8> {
    let mut event = Vec::new();
    put_key(&mut event, 1, 1);
    event.extend_from_slice(&wall_time.to_le_bytes());
    put_key(&mut event, 2, 0);
    put_varint(&mut event, step as u64); // int64: a negative step takes ten bytes
    event
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A field's key: its number and wire type (0 varint, 1 64-bit, 2 length-delimited, 5 32-bit).
fn put_key(out: &mut Vec<u8>, field: u64, wire: u64) {
    put_varint(out, (field << 3) | wire);
}

fn put_bytes(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    put_key(out, field, 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// The machine's name for the file name (TensorBoard's convention), `localhost` if unknown.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().replace(['/', '\\'], "_"))
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_an_error_that_names_the_file_not_a_panic() {
        // /dev/full answers every write with ENOSPC.
        let file = OpenOptions::new().write(true).open("/dev/full").unwrap();
        let mut w = EventWriter { path: PathBuf::from("tb/events.out.tfevents.test"), out: BufWriter::new(file) };
        let big = "x".repeat(10_000); // more than the buffer holds: the write itself fails
        let err = match w.scalars(1, &[(big.as_str(), 1.0)]) {
            Err(e) => e,
            Ok(()) => w.flush().unwrap_err(),
        };
        let text = format!("{err:#}");
        assert!(text.contains("tb/events.out.tfevents.test") && text.contains("No space left"), "{text}");
        assert!(w.scalars(2, &[("a/b", 2.0)]).and_then(|_| w.flush()).is_err(), "still refused, no panic");
        drop(w);
    }

    #[test]
    fn varints_and_keys_follow_the_protobuf_encoding() {
        let mut out = Vec::new();
        put_varint(&mut out, 300);
        assert_eq!(out, [0xac, 0x02]);
        out.clear();
        put_varint(&mut out, -1i64 as u64);
        assert_eq!(out.len(), 10, "a negative int64 takes ten bytes");
        out.clear();
        put_bytes(&mut out, 3, b"ab");
        assert_eq!(out, [0x1a, 2, b'a', b'b']);
    }
}
