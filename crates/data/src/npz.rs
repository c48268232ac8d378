//! `.npz` files (a zip of `.npy` arrays, as numpy's `savez` writes them) read with `npyz`, with
//! the element conversions the OGBench reader needs; errors name the file and the array.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use crate::OgbenchDataError;

pub(crate) fn bad(path: &Path, reason: String) -> OgbenchDataError {
    OgbenchDataError::BadFile { path: path.to_path_buf(), reason }
}

/// An `.npz` file (a zip of `.npy` arrays) read with `npyz`; every error names the file and
/// the array.
pub(crate) struct NpzFile {
    path: PathBuf,
    archive: npyz::npz::NpzArchive<BufReader<File>>,
    names: Vec<String>,
}

/// One `.npy` array: its header (read by `npyz`) and its bytes, read whole from the zip so
/// that element conversion runs on memory, not on the decompressor.
pub(crate) struct NpyArray {
    pub(crate) shape: Vec<usize>,
    header: npyz::NpyHeader,
    dtype: npyz::TypeStr,
    bytes: Vec<u8>,
    data_start: usize,
}

impl NpzFile {
    pub(crate) fn open(path: &Path) -> Result<Self, OgbenchDataError> {
        let archive = npyz::npz::NpzArchive::open(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidData => bad(path, format!("not an npz (zip) file: {e}")),
            _ => OgbenchDataError::Io { path: path.to_path_buf(), source: e },
        })?;
        let names = archive.array_names().map(str::to_string).collect();
        Ok(Self { path: path.to_path_buf(), archive, names })
    }

    pub(crate) fn has(&self, key: &str) -> bool {
        self.names.iter().any(|n| n == key)
    }

    pub(crate) fn array(&mut self, key: &str) -> Result<NpyArray, OgbenchDataError> {
        let failed = |e: std::io::Error| bad(&self.path, format!("`{key}`: {e}"));
        let mut bytes = Vec::new();
        match self.archive.zip_archive().by_name(&npyz::npz::file_name_from_array_name(key)) {
            Ok(mut entry) => entry.read_to_end(&mut bytes).map_err(failed)?,
            Err(zip::result::ZipError::FileNotFound) => {
                return Err(OgbenchDataError::MissingKey {
                    path: self.path.clone(),
                    key: key.to_string(),
                    present: self.names.clone(),
                })
            }
            Err(e) => return Err(bad(&self.path, format!("`{key}`: {e}"))),
        };
        NpyArray::parse(bytes).map_err(|reason| bad(&self.path, format!("`{key}`: {reason}")))
    }
}

impl NpyArray {
    /// Parses the header of an `.npy` array (versions 1–3) and checks the data length.
    fn parse(bytes: Vec<u8>) -> Result<Self, String> {
        let mut data = &bytes[..];
        // npyz 0.9 multiplies the header's dimensions unchecked: a shape whose product
        // overflows panics where overflow checks are on (tests, debug builds), so a panic of its
        // header parser is a malformed header here (the checked count below refuses it in
        // release builds, where the product wraps).
        let parsed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| npyz::NpyHeader::from_reader(&mut data)));
        let header = parsed
            .map_err(|_| "not an .npy array: its header's shape overflows".to_string())?
            .map_err(|e| format!("not an .npy array: {e}"))?;
        let data_start = bytes.len() - data.len();
        let npy = npyz::NpyFile::with_header(header.clone(), data);
        let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
        // A header's shape is a claim: its product must not overflow (it sizes what follows).
        let count = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        let count = count.ok_or_else(|| format!("shape {shape:?} has more elements than fit in memory"))?;
        if npy.order() == npyz::Order::Fortran && shape.len() > 1 && count > 0 {
            return Err("Fortran-ordered arrays are not supported".into());
        }
        let dtype = match npy.dtype() {
            npyz::DType::Plain(t) => t,
            other => return Err(format!("unsupported dtype {}", other.descr())),
        };
        let size = dtype.num_bytes().ok_or_else(|| format!("unsupported dtype `{dtype}`"))?;
        if count.checked_mul(size) != Some(data.len()) {
            return Err(format!("{} data bytes for shape {shape:?} of `{dtype}`", data.len()));
        }
        Ok(Self { shape, header, dtype, bytes, data_start })
    }

    pub(crate) fn rows(&self, path: &Path, key: &str) -> Result<usize, OgbenchDataError> {
        self.shape.first().copied().ok_or_else(|| bad(path, format!("`{key}` is a scalar, expected an array")))
    }

    /// Row width (1 for a 1-D array).
    pub(crate) fn width(&self) -> usize {
        self.shape.iter().skip(1).product()
    }

    /// The elements converted by `f32`/`i64`/`bool` rules from any numeric dtype numpy writes.
    fn convert<T>(
        &self,
        path: &Path,
        key: &str,
        float: impl Fn(f64) -> Option<T>,
        int: impl Fn(i64) -> T,
    ) -> Result<Vec<T>, OgbenchDataError> {
        use npyz::TypeChar::{Bool, Float, Int, Uint};
        let npy = npyz::NpyFile::with_header(self.header.clone(), &self.bytes[self.data_start..]);
        let dtype = &self.dtype;
        let unsupported = || bad(path, format!("`{key}`: unsupported dtype `{dtype}`"));
        macro_rules! read {
            ($t:ty, $f:expr) => {
                npy.data::<$t>()
                    .map_err(|e| bad(path, format!("`{key}`: {e}")))?
                    .map(|x| x.map($f))
                    .collect::<std::io::Result<Vec<_>>>()
                    .map_err(|e| bad(path, format!("`{key}`: {e}")))?
            };
        }
        let floats = |v: Vec<Option<T>>| {
            v.into_iter()
                .collect::<Option<Vec<T>>>()
                .ok_or_else(|| bad(path, format!("`{key}` holds floats ({dtype}); expected integers")))
        };
        Ok(match (dtype.type_char(), dtype.size_field()) {
            (Float, 4) => floats(read!(f32, |x| float(f64::from(x))))?,
            (Float, 8) => floats(read!(f64, &float))?,
            (Bool, 1) => read!(bool, |x| int(i64::from(x))),
            (Int, 1) => read!(i8, |x| int(i64::from(x))),
            (Int, 2) => read!(i16, |x| int(i64::from(x))),
            (Int, 4) => read!(i32, |x| int(i64::from(x))),
            (Int, 8) => read!(i64, &int),
            (Uint, 1) => read!(u8, |x| int(i64::from(x))),
            (Uint, 2) => read!(u16, |x| int(i64::from(x))),
            (Uint, 4) => read!(u32, |x| int(i64::from(x))),
            (Uint, 8) => read!(u64, |x| int(x as i64)),
            _ => return Err(unsupported()),
        })
    }

    pub(crate) fn to_f32(&self, path: &Path, key: &str) -> Result<Vec<f32>, OgbenchDataError> {
        self.convert(path, key, |x| Some(x as f32), |x| x as f32)
    }

    pub(crate) fn to_i64(&self, path: &Path, key: &str) -> Result<Vec<i64>, OgbenchDataError> {
        self.convert(path, key, |_| None, |x| x)
    }

    pub(crate) fn to_bool(&self, path: &Path, key: &str) -> Result<Vec<bool>, OgbenchDataError> {
        self.convert(path, key, |x| Some(x != 0.0), |x| x != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
        let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn npy_parses_shapes_and_converts_dtypes() {
        let data: Vec<u8> = [1.5f32, -2.0, 3.0, 4.0, 5.0, 6.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        let a = NpyArray::parse(npy("<f4", "(3, 2)", &data)).unwrap();
        assert_eq!((a.shape.clone(), a.width()), (vec![3, 2], 2));
        assert_eq!(a.to_f32(Path::new("x"), "k").unwrap(), vec![1.5, -2.0, 3.0, 4.0, 5.0, 6.0]);

        let b = NpyArray::parse(npy("|b1", "(3,)", &[1, 0, 1])).unwrap();
        assert_eq!(b.to_bool(Path::new("x"), "k").unwrap(), vec![true, false, true]);

        let data: Vec<u8> = [-1i32, 7].iter().flat_map(|x| x.to_le_bytes()).collect();
        let c = NpyArray::parse(npy("<i4", "(2,)", &data)).unwrap();
        assert_eq!(c.to_i64(Path::new("x"), "k").unwrap(), vec![-1, 7]);

        let data: Vec<u8> = [0.25f64].iter().flat_map(|x| x.to_be_bytes()).collect();
        let d = NpyArray::parse(npy(">f8", "(1, 1)", &data)).unwrap();
        assert_eq!(d.to_f32(Path::new("x"), "k").unwrap(), vec![0.25]);
    }

    #[test]
    fn npy_rejects_wrong_lengths_and_float_buttons() {
        let err = NpyArray::parse(npy("<f4", "(3, 2)", &[0; 20])).err().unwrap();
        assert!(err.contains("20 data bytes"), "{err}");
        let a = NpyArray::parse(npy("<f4", "(1,)", &[0; 4])).unwrap();
        let err = a.to_i64(Path::new("f.npz"), "button_states").unwrap_err().to_string();
        assert_eq!(err, "f.npz: `button_states` holds floats (<f4); expected integers");
    }

    /// A valid `.npz` of two arrays, one stored and one deflated (as `savez_compressed` does).
    fn npz_bytes() -> Vec<u8> {
        use std::io::Write;
        let floats: Vec<u8> = (0..12).flat_map(|i| (i as f32).to_le_bytes()).collect();
        let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        for (name, method, body) in [
            ("observations.npy", zip::CompressionMethod::Stored, npy("<f4", "(4, 3)", &floats)),
            ("terminals.npy", zip::CompressionMethod::Deflated, npy("|b1", "(4,)", &[0, 0, 0, 1])),
        ] {
            zip.start_file(name, zip::write::FileOptions::default().compression_method(method)).unwrap();
            zip.write_all(&body).unwrap();
        }
        zip.finish().unwrap().into_inner()
    }

    #[test]
    fn a_valid_npz_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ok.npz");
        std::fs::write(&path, npz_bytes()).unwrap();
        let mut f = NpzFile::open(&path).unwrap();
        assert!(f.has("observations") && f.has("terminals"));
        assert_eq!(f.array("observations").unwrap().to_f32(&path, "observations").unwrap()[11], 11.0);
        assert_eq!(f.array("terminals").unwrap().to_bool(&path, "terminals").unwrap(), vec![false, false, false, true]);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 2000, ..Default::default() })]

        /// The zip layer: a valid `.npz` with bytes overwritten, cut short or grown by garbage
        /// is read or refused with an error naming the file; no panic, no hang.
        #[test]
        fn npz_files_with_damaged_bytes_are_read_or_refused(
            edits in proptest::collection::vec((proptest::prelude::any::<usize>(), proptest::prelude::any::<u8>()), 0..8),
            cut in proptest::option::of(proptest::prelude::any::<usize>()),
            tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..3),
        ) {
            let mut bytes = npz_bytes();
            for (at, b) in edits {
                let n = bytes.len();
                bytes[at % n] = b;
            }
            if let Some(c) = cut {
                bytes.truncate(c % (bytes.len() + 1));
            }
            bytes.extend(tail);
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("fuzz.npz");
            std::fs::write(&path, &bytes).unwrap();
            match NpzFile::open(&path) {
                Err(e) => proptest::prop_assert!(e.to_string().contains("fuzz.npz"), "{}", e),
                Ok(mut f) => {
                    for key in ["observations", "terminals", "absent"] {
                        if let Ok(a) = f.array(key) {
                            let _ = (a.to_f32(&path, key), a.to_bool(&path, key));
                        }
                    }
                }
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 4000, ..Default::default() })]

        /// `.npy` arrays with random shapes, dtypes and bytes, or a valid one with bytes
        /// overwritten or cut: parsed and converted, or refused; no panic, and no accepted shape
        /// whose product overflows (found by this test: a `(4294967296, 4294967296)` header with
        /// no data wrapped to 0 elements and was accepted with 2^32 rows).
        #[test]
        fn npy_arrays_of_any_header_and_bytes_are_refused_or_consistent(
            dims in proptest::collection::vec(proptest::prop_oneof![
                0usize..5,
                proptest::prelude::Just(1usize << 32),
                proptest::prelude::Just(usize::MAX),
            ], 0..4),
            descr in proptest::sample::select(vec!["<f4", "<f8", ">f8", "|b1", "<i4", "<i8", "<u2", "|u1", "<c8", "|O"]),
            data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80),
            edits in proptest::collection::vec((proptest::prelude::any::<usize>(), proptest::prelude::any::<u8>()), 0..4),
        ) {
            let shape = match dims.len() {
                0 => "()".to_string(),
                1 => format!("({},)", dims[0]),
                _ => format!("({})", dims.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
            };
            let mut bytes = npy(descr, &shape, &data);
            for (at, b) in edits {
                let n = bytes.len();
                bytes[at % n] = b;
            }
            if let Ok(a) = NpyArray::parse(bytes) {
                let count = a.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
                proptest::prop_assert!(count.is_some(), "accepted a shape {:?} whose size overflows", a.shape);
                let count = count.unwrap_or(0);
                let path = Path::new("fuzz.npz");
                if let Ok(v) = a.to_f32(path, "k") {
                    proptest::prop_assert_eq!(v.len(), count);
                }
                let _ = (a.to_i64(path, "k"), a.to_bool(path, "k"));
            }
        }
    }
}
