//! Metric sinks (JSONL, CSV, TensorBoard) and the fan-out [`Logger`].

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::tb_writer::EventWriter;
use anyhow::{bail, ensure, Context, Result};

/// File name of the JSONL metrics file inside a run directory.
pub const JSONL_FILE_NAME: &str = "metrics.jsonl";
/// File name of the CSV metrics file inside a run directory.
pub const CSV_FILE_NAME: &str = "metrics.csv";
/// Sub-directory of a run directory that holds TensorBoard event files.
pub const TB_DIR_NAME: &str = "tb";

/// Header line of [`CsvSink`] files (long format: one row per scalar).
const CSV_HEADER: &str = "step,wall_time,name,value\n";
/// Keys every JSONL row already uses; metric names may not take them.
const RESERVED_NAMES: [&str; 2] = ["step", "wall_time"];

/// A destination for scalar metrics.
///
/// `step` is the training step the values belong to (environment steps or updates; the
/// caller decides and says so in the metric name space). Implementations may buffer;
/// [`MetricSink::flush`] makes what was logged so far durable (or, for TensorBoard, hands
/// it to the writer thread).
pub trait MetricSink {
    /// Records `scalars` (pairs of namespaced name and value) at `step`.
    fn log_scalars(&mut self, step: u64, scalars: &[(&str, f64)]) -> Result<()>;

    /// Records an RGB image (`height × width × 3` bytes, top row first) under `tag` at `step`,
    /// where the sink stores images; the default ignores it.
    fn log_image(&mut self, _tag: &str, _step: u64, _width: usize, _height: usize, _rgb: &[u8]) -> Result<()> {
        Ok(())
    }

    /// Pushes buffered rows to the underlying file.
    fn flush(&mut self) -> Result<()>;

    /// Flushes and releases the sink's resources; later calls to `log_scalars` may fail.
    /// The default only flushes. [`TensorBoardSink`] overrides it to join its writer
    /// thread, after which its event file is complete on disk.
    fn close(&mut self) -> Result<()> {
        self.flush()
    }
}

/// Checks that `name` can be used as a metric name in every sink: not empty, no control
/// characters, and not one of the reserved JSONL keys `step` and `wall_time`.
pub fn check_metric_name(name: &str) -> Result<()> {
    ensure!(!name.is_empty(), "metric name is empty");
    ensure!(!name.chars().any(char::is_control), "metric name {name:?} contains a control character");
    ensure!(
        !RESERVED_NAMES.contains(&name),
        "metric name {name:?} is reserved (rows already have `step` and `wall_time`)"
    );
    Ok(())
}

/// Checks every name of one `log` call, including that no name appears twice.
fn check_scalars(scalars: &[(&str, f64)]) -> Result<()> {
    let mut seen = HashSet::with_capacity(scalars.len());
    for (name, _) in scalars {
        check_metric_name(name)?;
        ensure!(seen.insert(*name), "metric name {name:?} appears twice in one log call");
    }
    Ok(())
}

/// Seconds since the Unix epoch, as TensorBoard stores `wall_time`.
fn wall_time_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// Opens `path` for appending (creating it and its parent directory), and ends a final
/// partial line left by a crash so that the next row starts on a line of its own.
/// Returns the file and whether it was empty.
fn open_append(path: &Path) -> Result<(File, bool)> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).with_context(|| format!("creating directory {}", parent.display()))?;
    }
    let mut file = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)
        .with_context(|| format!("opening {} for appending", path.display()))?;
    let len = file.metadata()?.len();
    if len > 0 {
        let mut last = [0u8; 1];
        file.seek(SeekFrom::Start(len - 1))?;
        file.read_exact(&mut last)?;
        if last[0] != b'\n' {
            file.write_all(b"\n").with_context(|| format!("ending the partial last line of {}", path.display()))?;
        }
    }
    Ok((file, len == 0))
}

/// Formats an `f64` as a JSON value: shortest round-trip form; `null` for NaN and ±inf,
/// which JSON cannot represent.
fn json_number(v: f64) -> String {
    if v.is_finite() {
        serde_json::to_string(&v).unwrap_or_else(|_| "null".to_string())
    } else {
        "null".to_string()
    }
}

/// One JSON object per line in `metrics.jsonl`:
/// `{"step":10,"wall_time":1712345678.5,"critic/q_mean":1.25,...}`.
///
/// The file is opened in append mode, so a resumed run continues the same file. Non-finite
/// values are written as `null` (JSON has no NaN). Rows are buffered until
/// [`MetricSink::flush`] or drop.
pub struct JsonlSink {
    path: PathBuf,
    out: BufWriter<File>,
}

impl JsonlSink {
    /// Opens (or creates) `<run_dir>/metrics.jsonl` for appending.
    pub fn open(run_dir: impl AsRef<Path>) -> Result<Self> {
        Self::open_file(run_dir.as_ref().join(JSONL_FILE_NAME))
    }

    /// Opens (or creates) the JSONL file at `path` for appending.
    pub fn open_file(path: impl Into<PathBuf>) -> Result<Self> {
        let path = path.into();
        let (file, _) = open_append(&path)?;
        Ok(Self { path, out: BufWriter::new(file) })
    }

    /// Path of the file this sink appends to.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl MetricSink for JsonlSink {
    fn log_scalars(&mut self, step: u64, scalars: &[(&str, f64)]) -> Result<()> {
        check_scalars(scalars)?;
        if scalars.is_empty() {
            return Ok(());
        }
        let mut line = String::with_capacity(48 + 32 * scalars.len());
        write!(line, "{{\"step\":{step},\"wall_time\":{}", json_number(wall_time_now()))?;
        for (name, value) in scalars {
            line.push(',');
            line.push_str(&serde_json::to_string(name)?);
            line.push(':');
            line.push_str(&json_number(*value));
        }
        line.push_str("}\n");
        self.out.write_all(line.as_bytes()).with_context(|| format!("writing to {}", self.path.display()))
    }

    fn flush(&mut self) -> Result<()> {
        self.out.flush().with_context(|| format!("flushing {}", self.path.display()))
    }
}

/// Quotes a CSV field when it holds a comma or a double quote (RFC 4180).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// `metrics.csv` in long format, one row per scalar: `step,wall_time,name,value`.
///
/// Long format lets new metric names appear at any step. The file is opened in append
/// mode and the header is written only when the file is new; an existing file must start
/// with that header. Values use Rust's shortest round-trip form (`NaN`, `inf` and `-inf`
/// for non-finite values, which pandas reads). Rows are buffered until flush or drop.
pub struct CsvSink {
    path: PathBuf,
    out: BufWriter<File>,
}

impl CsvSink {
    /// Opens (or creates) `<run_dir>/metrics.csv` for appending.
    pub fn open(run_dir: impl AsRef<Path>) -> Result<Self> {
        Self::open_file(run_dir.as_ref().join(CSV_FILE_NAME))
    }

    /// Opens (or creates) the CSV file at `path` for appending.
    pub fn open_file(path: impl Into<PathBuf>) -> Result<Self> {
        let path = path.into();
        let (mut file, is_new) = open_append(&path)?;
        if is_new {
            file.write_all(CSV_HEADER.as_bytes())
                .with_context(|| format!("writing the header of {}", path.display()))?;
        } else {
            let mut head = Vec::with_capacity(CSV_HEADER.len());
            file.seek(SeekFrom::Start(0))?;
            (&file).take(CSV_HEADER.len() as u64).read_to_end(&mut head)?;
            ensure!(
                head == CSV_HEADER.as_bytes(),
                "{} exists but does not start with the header {:?}",
                path.display(),
                CSV_HEADER.trim_end()
            );
        }
        Ok(Self { path, out: BufWriter::new(file) })
    }

    /// Path of the file this sink appends to.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl MetricSink for CsvSink {
    fn log_scalars(&mut self, step: u64, scalars: &[(&str, f64)]) -> Result<()> {
        check_scalars(scalars)?;
        let wall_time = wall_time_now();
        let mut rows = String::with_capacity(48 * scalars.len());
        for (name, value) in scalars {
            writeln!(rows, "{step},{wall_time:?},{},{value:?}", csv_field(name))?;
        }
        self.out.write_all(rows.as_bytes()).with_context(|| format!("writing to {}", self.path.display()))
    }

    fn flush(&mut self) -> Result<()> {
        self.out.flush().with_context(|| format!("flushing {}", self.path.display()))
    }
}

/// TensorBoard event files (`tb_writer`: values stored as `f32` `simple_value`, steps as
/// `i64`, `wall_time` taken when the value is logged). Every open gets a file of its own, so a
/// resumed run adds a file to the same directory and TensorBoard reads them all. Write errors
/// (a full disk) are returned, never a panic.
pub struct TensorBoardSink {
    log_dir: PathBuf,
    writer: Option<EventWriter>,
}

impl TensorBoardSink {
    /// Starts a new event file in `log_dir` (created if missing), e.g. `<run>/tb`.
    pub fn new(log_dir: impl Into<PathBuf>) -> Result<Self> {
        let log_dir = log_dir.into();
        fs::create_dir_all(&log_dir)
            .with_context(|| format!("creating TensorBoard directory {}", log_dir.display()))?;
        let writer = EventWriter::create(&log_dir)?;
        Ok(Self { log_dir, writer: Some(writer) })
    }

    /// Opens a sink on `<run_dir>/tb`.
    pub fn for_run_dir(run_dir: impl AsRef<Path>) -> Result<Self> {
        Self::new(run_dir.as_ref().join(TB_DIR_NAME))
    }

    /// Directory the event file is written to.
    pub fn log_dir(&self) -> &Path {
        &self.log_dir
    }

    fn writer(&mut self) -> Result<&mut EventWriter> {
        match self.writer.as_mut() {
            Some(w) => Ok(w),
            None => bail!("TensorBoard sink for {} is closed", self.log_dir.display()),
        }
    }
}

impl MetricSink for TensorBoardSink {
    fn log_scalars(&mut self, step: u64, scalars: &[(&str, f64)]) -> Result<()> {
        check_scalars(scalars)?;
        let step = i64::try_from(step).context("step does not fit in i64")?;
        let values: Vec<(&str, f32)> = scalars.iter().map(|(n, v)| (*n, *v as f32)).collect();
        self.writer()?.scalars(step, &values)
    }

    fn log_image(&mut self, tag: &str, step: u64, width: usize, height: usize, rgb: &[u8]) -> Result<()> {
        check_metric_name(tag)?;
        ensure!(rgb.len() == width * height * 3, "image {tag}: {} bytes for {width} × {height} RGB", rgb.len());
        let step = i64::try_from(step).context("step does not fit in i64")?;
        let png = encode_png(width, height, rgb).with_context(|| format!("encoding image {tag} as PNG"))?;
        self.writer()?.image(step, tag, width, height, &png)
    }

    fn flush(&mut self) -> Result<()> {
        match self.writer.as_mut() {
            Some(w) => w.flush(),
            None => Ok(()),
        }
    }

    fn close(&mut self) -> Result<()> {
        match self.writer.take() {
            Some(mut w) => w.flush(),
            None => Ok(()),
        }
    }
}

/// An RGB image (rows top first, 3 bytes a pixel) as PNG bytes.
fn encode_png(width: usize, height: usize, rgb: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, u32::try_from(width)?, u32::try_from(height)?);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.write_header()?.write_image_data(rgb)?;
    Ok(out)
}

/// Fans each `log` call out to several sinks and remembers the latest value of each metric.
///
/// Names are namespaced (`critic/q_mean`, `eval/success`, `time/sps`) and checked with
/// [`check_metric_name`] before anything is written, so a bad call writes nothing.
/// Dropping the logger drops its sinks (buffered rows are flushed, TensorBoard's thread
/// is joined); call [`Logger::close`] to see errors instead.
#[derive(Default)]
pub struct Logger {
    sinks: Vec<Box<dyn MetricSink + Send>>,
    latest: BTreeMap<String, (u64, f64)>,
}

impl Logger {
    /// A logger with no sinks (it still keeps the latest values).
    pub fn new() -> Self {
        Self::default()
    }

    /// The standard sinks of a run directory: `metrics.jsonl`, `metrics.csv` and `tb/`.
    pub fn for_run_dir(run_dir: impl AsRef<Path>) -> Result<Self> {
        let run_dir = run_dir.as_ref();
        Ok(Self::new()
            .with_sink(JsonlSink::open(run_dir)?)
            .with_sink(CsvSink::open(run_dir)?)
            .with_sink(TensorBoardSink::for_run_dir(run_dir)?))
    }

    /// Adds a sink (builder style).
    pub fn with_sink(mut self, sink: impl MetricSink + Send + 'static) -> Self {
        self.add_sink(Box::new(sink));
        self
    }

    /// Adds a sink.
    pub fn add_sink(&mut self, sink: Box<dyn MetricSink + Send>) {
        self.sinks.push(sink);
    }

    /// Number of sinks.
    pub fn num_sinks(&self) -> usize {
        self.sinks.len()
    }

    /// Logs `scalars` at `step` to every sink. Every sink is tried even when one fails;
    /// the error then names each failing sink by index.
    pub fn log(&mut self, step: u64, scalars: &[(&str, f64)]) -> Result<()> {
        check_scalars(scalars)?;
        for (name, value) in scalars {
            self.latest.insert((*name).to_string(), (step, *value));
        }
        self.each_sink(|sink| sink.log_scalars(step, scalars))
    }

    /// Logs an RGB image to every sink that stores images (TensorBoard).
    pub fn log_image(&mut self, tag: &str, step: u64, width: usize, height: usize, rgb: &[u8]) -> Result<()> {
        self.each_sink(|sink| sink.log_image(tag, step, width, height, rgb))
    }

    /// Flushes every sink.
    pub fn flush(&mut self) -> Result<()> {
        self.each_sink(|sink| sink.flush())
    }

    /// Closes every sink (see [`MetricSink::close`]).
    pub fn close(&mut self) -> Result<()> {
        self.each_sink(|sink| sink.close())
    }

    /// The latest value logged under `name`.
    pub fn latest(&self, name: &str) -> Option<f64> {
        self.latest.get(name).map(|&(_, v)| v)
    }

    /// Latest `(step, value)` of every metric logged so far, sorted by name.
    pub fn latest_all(&self) -> &BTreeMap<String, (u64, f64)> {
        &self.latest
    }

    fn each_sink(&mut self, mut f: impl FnMut(&mut dyn MetricSink) -> Result<()>) -> Result<()> {
        let mut errors = Vec::new();
        for (i, sink) in self.sinks.iter_mut().enumerate() {
            if let Err(e) = f(sink.as_mut()) {
                errors.push(e.context(format!("metric sink {i}")));
            }
        }
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.pop().expect("one error")),
            n => {
                let all: Vec<String> = errors.iter().map(|e| format!("{e:#}")).collect();
                bail!("{n} metric sinks failed: {}", all.join("; "))
            }
        }
    }
}

impl MetricSink for Logger {
    fn log_scalars(&mut self, step: u64, scalars: &[(&str, f64)]) -> Result<()> {
        self.log(step, scalars)
    }

    fn flush(&mut self) -> Result<()> {
        Logger::flush(self)
    }

    fn close(&mut self) -> Result<()> {
        Logger::close(self)
    }
}
