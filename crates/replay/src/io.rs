//! Saving and loading a [`ReplayBuffer`] for resume.
//!
//! File layout, all little-endian:
//! ```text
//! magic    8 bytes  b"MVPRPLAY"
//! version  u32      1
//! capacity, obs_dim, act_dim, len, pos   5 × u64   (pos: the row the next push writes)
//! observations [len, obs_dim], next_observations [len, obs_dim], actions [len, act_dim],
//! rewards [len], terminals [len], masks [len]   raw f32, rows in storage order
//! ```
//! The file is written to a temporary file in the same directory, flushed to disk and
//! renamed over the target, so a crash mid-save leaves the previous file intact.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::Path;

use crate::{ReplayBuffer, ReplayError, Result};

const MAGIC: &[u8; 8] = b"MVPRPLAY";
const VERSION: u32 = 1;
const HEADER_LEN: usize = 8 + 4 + 5 * 8;

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ReplayError + '_ {
    move |source| ReplayError::Io { path: path.to_path_buf(), source }
}

fn bad(path: &Path, reason: String) -> ReplayError {
    ReplayError::BadFile { path: path.to_path_buf(), reason }
}

impl ReplayBuffer {
    /// Writes the whole buffer (contents, write position, dimensions) to `path` atomically.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let name = path.file_name().ok_or_else(|| bad(path, "not a file path".into()))?;
        let tmp = path.with_file_name(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
        let result = self.write_to(&tmp).and_then(|()| fs::rename(&tmp, path).map_err(io_err(path)));
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result?;
        // Make the rename itself durable; not every platform can sync a directory.
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            let _ = File::open(dir).and_then(|d| d.sync_all());
        }
        Ok(())
    }

    fn write_to(&self, tmp: &Path) -> Result<()> {
        let file = File::create(tmp).map_err(io_err(tmp))?;
        let mut w = BufWriter::new(file);
        let header = [self.capacity, self.obs_dim, self.act_dim, self.len, self.pos];
        let mut write = || -> std::io::Result<()> {
            w.write_all(MAGIC)?;
            w.write_all(&VERSION.to_le_bytes())?;
            for v in header {
                w.write_all(&(v as u64).to_le_bytes())?;
            }
            for array in self.arrays() {
                for v in array {
                    w.write_all(&v.to_le_bytes())?;
                }
            }
            w.flush()?;
            w.get_ref().sync_all()
        };
        write().map_err(io_err(tmp))
    }

    fn arrays(&self) -> [&Vec<f32>; 6] {
        [&self.obs, &self.next_obs, &self.actions, &self.rewards, &self.terminals, &self.masks]
    }

    /// Reads a buffer written by [`ReplayBuffer::save`]; a wrong magic, version, header or
    /// file length is an error that says what was found and what was expected.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = fs::read(path).map_err(io_err(path))?;
        if bytes.len() < HEADER_LEN || &bytes[..8] != MAGIC {
            return Err(bad(path, format!("not a replay buffer file (expected magic {:?})", "MVPRPLAY")));
        }
        let version = u32::from_le_bytes(bytes[8..12].try_into().unwrap());
        if version != VERSION {
            return Err(bad(path, format!("format version {version}, this build reads version {VERSION}")));
        }
        let field = |i: usize| u64::from_le_bytes(bytes[12 + 8 * i..][..8].try_into().unwrap());
        let [capacity, obs_dim, act_dim, len, pos] = [0, 1, 2, 3, 4].map(field);
        if capacity == 0 || len > capacity || pos >= capacity || (len < capacity && pos != len) {
            return Err(bad(
                path,
                format!("inconsistent header: capacity {capacity}, len {len}, write position {pos}"),
            ));
        }
        // Row width in f32 values: obs, next_obs, action, reward, terminal, mask.
        let floats = obs_dim.checked_mul(2).and_then(|o| o.checked_add(act_dim)).and_then(|w| w.checked_add(3));
        let body = floats.and_then(|w| w.checked_mul(len)).and_then(|n| n.checked_mul(4));
        let expected = body.and_then(|b| usize::try_from(b).ok()).and_then(|b| b.checked_add(HEADER_LEN));
        if expected != Some(bytes.len()) {
            return Err(bad(
                path,
                format!(
                    "file has {} bytes, but its header (len {len}, obs_dim {obs_dim}, act_dim {act_dim}) calls for {}",
                    bytes.len(),
                    expected.map_or("more than fits in memory".into(), |e| e.to_string()),
                ),
            ));
        }
        // All fields fit in usize now: their products do.
        let [capacity, obs_dim, act_dim, len, pos] = [capacity, obs_dim, act_dim, len, pos].map(|v| v as usize);
        let mut rest = &bytes[HEADER_LEN..];
        let mut take = |n: usize| -> Vec<f32> {
            let (head, tail) = rest.split_at(4 * n);
            rest = tail;
            head.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
        };
        Ok(Self {
            capacity,
            obs_dim,
            act_dim,
            len,
            pos,
            obs: take(len * obs_dim),
            next_obs: take(len * obs_dim),
            actions: take(len * act_dim),
            rewards: take(len),
            terminals: take(len),
            masks: take(len),
            reward_map: None,
        })
    }

    /// Replaces this buffer's contents with the file at `path`, which must have been saved
    /// from a buffer of the same capacity and dimensions (else an error naming both).
    pub fn restore(&mut self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let loaded = Self::load(path)?;
        let dims = |b: &Self| (b.capacity, b.obs_dim, b.act_dim);
        if dims(&loaded) != dims(self) {
            let (c, o, a) = dims(&loaded);
            let (ec, eo, ea) = dims(self);
            return Err(bad(
                path,
                format!(
                    "holds capacity {c}, obs_dim {o}, act_dim {a}; this buffer has capacity {ec}, obs_dim {eo}, act_dim {ea}"
                ),
            ));
        }
        *self = Self { reward_map: self.reward_map, ..loaded };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Transition;

    fn filled(capacity: usize, pushes: usize) -> ReplayBuffer {
        let mut buf = ReplayBuffer::new(capacity, 3, 2).unwrap();
        for t in 0..pushes {
            let x = t as f32;
            // Values that only survive a bit-exact copy: signed zero, subnormals, NaN payloads.
            let odd = [-0.0, f32::from_bits(1), f32::from_bits(0x7fc0_1234), 1.0 / 3.0];
            buf.push(&Transition::new(
                &[x, odd[t % 4], -x],
                &[0.1 * x, odd[(t + 1) % 4]],
                odd[(t + 2) % 4],
                &[x, x, x],
                t % 5 == 4,
                (t % 2) as f32,
            ))
            .unwrap();
        }
        buf
    }

    fn bits(buf: &ReplayBuffer) -> Vec<Vec<u32>> {
        buf.arrays().iter().map(|a| a.iter().map(|v| v.to_bits()).collect()).collect()
    }

    #[test]
    fn save_then_load_round_trips_bit_for_bit() {
        let dir = tempfile::tempdir().unwrap();
        for (capacity, pushes) in [(8, 0), (8, 5), (8, 8), (8, 19)] {
            let buf = filled(capacity, pushes);
            let path = dir.path().join("replay.bin");
            buf.save(&path).unwrap();
            let back = ReplayBuffer::load(&path).unwrap();
            assert_eq!((back.capacity, back.obs_dim, back.act_dim), (capacity, 3, 2));
            assert_eq!((back.len, back.pos), (buf.len, buf.pos));
            assert_eq!(bits(&back), bits(&buf));
        }
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec!["replay.bin"], "no temporary file is left behind");
    }

    #[test]
    fn loaded_buffer_keeps_overwriting_where_the_saved_one_would() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("replay.bin");
        let (mut a, mut b) = (filled(8, 11), ReplayBuffer::new(8, 3, 2).unwrap());
        a.save(&path).unwrap();
        b.restore(&path).unwrap();
        for buf in [&mut a, &mut b] {
            buf.push(&Transition::new(&[7.0; 3], &[7.0; 2], 7.0, &[7.0; 3], true, 0.0)).unwrap();
        }
        assert_eq!(bits(&a), bits(&b));
        assert_eq!(a.pos, b.pos);
    }

    #[test]
    fn load_rejects_wrong_magic_version_and_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("replay.bin");
        filled(8, 6).save(&path).unwrap();
        let bytes = fs::read(&path).unwrap();
        let variant = |name: &str, edit: &dyn Fn(&mut Vec<u8>)| {
            let mut b = bytes.clone();
            edit(&mut b);
            let p = path.with_file_name(name);
            fs::write(&p, b).unwrap();
            ReplayBuffer::load(&p).unwrap_err().to_string()
        };
        assert!(variant("magic", &|b| b[0] = b'X').contains("not a replay buffer file"));
        assert!(variant("version", &|b| b[8] = 9).contains("format version 9, this build reads version 1"));
        assert!(variant("short", &|b| b.truncate(b.len() - 4)).contains("calls for"));
        assert!(variant("header", &|b| b[12 + 8 * 3] = 9).contains("inconsistent header"));
        let missing = ReplayBuffer::load(dir.path().join("missing.bin")).unwrap_err();
        assert!(matches!(missing, ReplayError::Io { .. }));
    }

    #[test]
    fn restore_rejects_other_dimensions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("replay.bin");
        filled(8, 6).save(&path).unwrap();
        let mut other = ReplayBuffer::new(8, 4, 2).unwrap();
        let err = other.restore(&path).unwrap_err().to_string();
        assert!(err.contains("holds capacity 8, obs_dim 3, act_dim 2; this buffer has capacity 8, obs_dim 4"), "{err}");
        assert!(other.is_empty());
    }
}
