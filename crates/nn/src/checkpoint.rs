//! Atomic checkpoints: named tensors in a safetensors file plus a small JSON of counters.
//!
//! Layout of a checkpoint root:
//! ```text
//! root/
//!   latest                 name of the newest complete checkpoint (one line)
//!   step_000010000/
//!     tensors.safetensors  parameters, target networks, optimiser moments, ...
//!     meta.json            counters, seeds, anything serde can write
//!     checksums.json       the CRC-32 of every other file, written last
//! ```
//! A checkpoint is written into a hidden temporary directory, flushed to disk, and renamed
//! into place; only then is `latest` replaced (again by write-and-rename). A save that fails
//! or is killed at any point leaves the previous checkpoint and `latest` untouched. Loading
//! verifies every file against `checksums.json` first: a damaged file is an error that names
//! it and the newest intact checkpoint beside it ([`Damaged`]).

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{de::DeserializeOwned, Serialize};
use tch::{nn::VarStore, Tensor};

use crate::adam::copy_checked;

const TENSORS: &str = "tensors.safetensors";
const META: &str = "meta.json";
const LATEST: &str = "latest";
const CHECKSUMS: &str = "checksums.json";
const TMP_PREFIX: &str = ".tmp-";

/// A loaded checkpoint: its tensors by name, and its metadata.
#[derive(Debug)]
pub struct Loaded<M> {
    /// Directory it was read from.
    pub dir: PathBuf,
    /// Every tensor, by name.
    pub tensors: HashMap<String, Tensor>,
    /// The JSON metadata.
    pub meta: M,
}

impl<M> Loaded<M> {
    /// Copies the tensors `{prefix}{name}` into the variables of `vs`, in place.
    pub fn load_varstore(&self, vs: &VarStore, prefix: &str) -> Result<()> {
        load_varstore(vs, &self.tensors, prefix)
    }
}

/// The variables of `vs` named `{prefix}{name}`, ready for [`save`].
pub fn varstore_tensors(vs: &VarStore, prefix: &str) -> Vec<(String, Tensor)> {
    let mut v: Vec<_> = vs.variables().into_iter().map(|(n, t)| (format!("{prefix}{n}"), t)).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Copies `{prefix}{name}` tensors into every variable of `vs`; a missing name or a shape
/// mismatch is an error that names the tensor.
pub fn load_varstore(vs: &VarStore, tensors: &HashMap<String, Tensor>, prefix: &str) -> Result<()> {
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, mut var) in vars {
        let key = format!("{prefix}{name}");
        let src = tensors.get(&key).with_context(|| format!("checkpoint has no tensor '{key}'"))?;
        let src = src.to_device(var.device()).to_kind(var.kind());
        copy_checked(&mut var, &src, &key)?;
    }
    Ok(())
}

/// Writes checkpoint `name` under `root` atomically and points `latest` at it.
/// Returns the checkpoint's directory.
pub fn save<M: Serialize>(root: &Path, name: &str, tensors: &[(String, Tensor)], meta: &M) -> Result<PathBuf> {
    save_with(root, name, tensors, meta, |_| Ok(()))
}

/// Like [`save`], with `extra` writing more files (e.g. a replay buffer) into the checkpoint's
/// temporary directory before it is committed; they are part of the same atomic step.
pub fn save_with<M: Serialize>(
    root: &Path,
    name: &str,
    tensors: &[(String, Tensor)],
    meta: &M,
    extra: impl FnOnce(&Path) -> Result<()>,
) -> Result<PathBuf> {
    fs::create_dir_all(root).with_context(|| format!("creating checkpoint directory {}", root.display()))?;
    remove_stale_temporaries(root);
    let tmp = root.join(format!("{TMP_PREFIX}{name}-{}", std::process::id()));
    let result =
        write_dir(&tmp, tensors, meta).and_then(|()| extra(&tmp)).and_then(|()| write_checksums(&tmp)).and_then(|()| {
            let dst = root.join(name);
            // Saving a name that already exists (e.g. the final save at a step just saved):
            // move the old copy aside, put the new one in place, then delete the old one.
            let old = root.join(format!("{TMP_PREFIX}old-{name}-{}", std::process::id()));
            let had_old = dst.exists() && fs::rename(&dst, &old).is_ok();
            fs::rename(&tmp, &dst).with_context(|| format!("renaming {} to {}", tmp.display(), dst.display()))?;
            if had_old {
                let _ = fs::remove_dir_all(&old);
            }
            sync_dir(root);
            write_atomically(&root.join(LATEST), format!("{name}\n").as_bytes())?;
            Ok(dst)
        });
    if result.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    result
}

fn write_dir<M: Serialize>(dir: &Path, tensors: &[(String, Tensor)], meta: &M) -> Result<()> {
    fs::create_dir_all(dir)?;
    let on_cpu: Vec<(String, Tensor)> =
        tensors.iter().map(|(n, t)| (n.clone(), t.detach().to_device(tch::Device::Cpu).contiguous())).collect();
    let path = dir.join(TENSORS);
    Tensor::write_safetensors(&on_cpu, &path).with_context(|| format!("writing {}", path.display()))?;
    fsync(&path)?;
    let json = serde_json::to_vec_pretty(meta).context("serialising checkpoint metadata")?;
    let mut f = fs::File::create(dir.join(META))?;
    f.write_all(&json)?;
    f.sync_all()?;
    sync_dir(dir);
    Ok(())
}

/// The CRC-32 of a file, streamed.
fn file_crc(path: &Path) -> Result<u32> {
    use std::io::Read;
    let mut f = fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut h = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            return Ok(h.finalize());
        }
        h.update(&buf[..n]);
    }
}

/// Writes `checksums.json` for every file of `dir`.
fn write_checksums(dir: &Path) -> Result<()> {
    let mut sums = std::collections::BTreeMap::new();
    for e in fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().to_string();
        if e.file_type()?.is_file() && name != CHECKSUMS {
            sums.insert(name, format!("{:08x}", file_crc(&e.path())?));
        }
    }
    let mut f = fs::File::create(dir.join(CHECKSUMS))?;
    f.write_all(&serde_json::to_vec_pretty(&sums)?)?;
    f.sync_all()?;
    sync_dir(dir);
    Ok(())
}

/// A checkpoint whose files do not match their checksums.
#[derive(Debug, thiserror::Error)]
#[error("checkpoint {dir} is damaged: {file} {problem}{}", intact_hint(.intact))]
pub struct Damaged {
    /// The checkpoint's directory.
    pub dir: PathBuf,
    /// The damaged file.
    pub file: String,
    /// What is wrong with it.
    pub problem: String,
    /// The newest intact checkpoint in the same root, if any.
    pub intact: Option<String>,
}

fn intact_hint(intact: &Option<String>) -> String {
    match intact {
        Some(name) => format!("; the newest intact checkpoint beside it is {name}"),
        None => "; no intact checkpoint beside it".to_string(),
    }
}

/// Checks every file of checkpoint `dir` against its `checksums.json`. A checkpoint written
/// before checksums existed (no `checksums.json`) passes.
pub fn verify(dir: &Path) -> Result<()> {
    let path = dir.join(CHECKSUMS);
    if !path.exists() {
        return Ok(());
    }
    let damaged = |file: &str, problem: String| {
        let intact = dir.parent().and_then(|root| newest_intact(root, dir.file_name()?.to_str()?));
        Damaged { dir: dir.to_path_buf(), file: file.to_string(), problem, intact }
    };
    let sums: std::collections::BTreeMap<String, String> =
        serde_json::from_slice(&fs::read(&path)?).map_err(|e| damaged(CHECKSUMS, format!("cannot be parsed ({e})")))?;
    for (file, want) in &sums {
        let p = dir.join(file);
        if !p.exists() {
            return Err(damaged(file, "is missing".into()).into());
        }
        let got = format!("{:08x}", file_crc(&p)?);
        if &got != want {
            return Err(damaged(file, format!("does not match its checksum (CRC-32 {got}, written {want})")).into());
        }
    }
    Ok(())
}

/// The newest checkpoint `step_*` under `root` older than `than` whose files are intact.
fn newest_intact(root: &Path, than: &str) -> Option<String> {
    let mut names: Vec<String> = fs::read_dir(root)
        .ok()?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("step_") && n.as_str() < than)
        .collect();
    names.sort();
    names.into_iter().rev().find(|n| root.join(n).join(META).exists() && verify(&root.join(n)).is_ok())
}

/// The checkpoint of step `step` under `root` (named `step_` and ten digits).
pub fn step_name(step: u64) -> String {
    format!("step_{step:010}")
}

/// Replaces `path` with `bytes` by writing a sibling temporary file and renaming it.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        "{TMP_PREFIX}{}-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let write = || -> Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        sync_dir(dir);
        Ok(())
    };
    write()
        .inspect_err(|_| {
            let _ = fs::remove_file(&tmp);
        })
        .with_context(|| format!("writing {}", path.display()))
}

/// Name of the newest complete checkpoint under `root`, if any.
pub fn latest(root: &Path) -> Option<String> {
    let name = fs::read_to_string(root.join(LATEST)).ok()?;
    let name = name.trim().to_string();
    root.join(&name).join(META).exists().then_some(name)
}

/// Loads the newest complete checkpoint under `root`.
pub fn load_latest<M: DeserializeOwned>(root: &Path) -> Result<Loaded<M>> {
    let name = latest(root).with_context(|| format!("no complete checkpoint in {}", root.display()))?;
    load(&root.join(name))
}

/// Loads the checkpoint in `dir`.
pub fn load<M: DeserializeOwned>(dir: &Path) -> Result<Loaded<M>> {
    let path = dir.join(TENSORS);
    if !path.exists() {
        bail!("{} is not a checkpoint (no {TENSORS})", dir.display());
    }
    verify(dir)?;
    let tensors = Tensor::read_safetensors(&path).with_context(|| format!("reading {}", path.display()))?;
    let meta_path = dir.join(META);
    let meta =
        serde_json::from_slice(&fs::read(&meta_path).with_context(|| format!("reading {}", meta_path.display()))?)
            .with_context(|| format!("parsing {}", meta_path.display()))?;
    Ok(Loaded { dir: dir.to_path_buf(), tensors: tensors.into_iter().collect(), meta })
}

/// Deletes all but the newest `keep` checkpoints named `step_*` (never the one `latest` names).
pub fn prune(root: &Path, keep: usize) -> Result<()> {
    let current = latest(root);
    let mut names: Vec<String> = fs::read_dir(root)?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("step_"))
        .collect();
    names.sort();
    let excess = names.len().saturating_sub(keep);
    for n in names.into_iter().take(excess) {
        if Some(&n) != current.as_ref() {
            fs::remove_dir_all(root.join(&n))?;
        }
    }
    Ok(())
}

/// Temporaries left by a killed writer of another process are removed; ours are in use.
fn remove_stale_temporaries(root: &Path) {
    let ours = format!("-{}", std::process::id());
    if let Ok(entries) = fs::read_dir(root) {
        for e in entries.flatten() {
            let n = e.file_name().to_string_lossy().to_string();
            if n.starts_with(TMP_PREFIX) && !n.ends_with(&ours) {
                let _ = fs::remove_dir_all(e.path()).or_else(|_| fs::remove_file(e.path()));
            }
        }
    }
}

fn fsync(path: &Path) -> Result<()> {
    fs::File::open(path)?.sync_all()?;
    Ok(())
}

fn sync_dir(dir: &Path) {
    // Directory fsync makes renames durable; not all filesystems allow it, so best effort.
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}
