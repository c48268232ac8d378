//! Training metrics for `mvp`: where scalars go, how to read them back, how to plot them.
//!
//! - [`MetricSink`] is the small trait every destination implements; [`JsonlSink`]
//!   (`metrics.jsonl`), [`CsvSink`] (`metrics.csv`, long format) and [`TensorBoardSink`]
//!   (event files under `tb/`, written by our own TFRecord writer, which returns every I/O
//!   error) are the sinks.
//! - [`Logger`] fans one `log(step, &[(name, value)])` call out to several sinks and keeps
//!   the latest value of every metric. Names are namespaced: `critic/q_mean`,
//!   `actor/mf_loss`, `eval/success`, `time/sps`.
//! - [`read_scalars`] and [`find_event_files`] are our own TensorBoard event-file reader
//!   (TFRecord framing with both CRC32C checks, and just enough protobuf decoding for
//!   scalar summaries), used by tests and by `mvp` tools.
//! - [`plot_curves`] draws labelled line charts to PNG with `plotters`.
//! - [`write_gif`] writes episode videos as animated GIFs; [`frame_strip`] makes the image of
//!   an episode that [`Logger::log_image`] sends to TensorBoard.
//!
//! What this crate may depend on: `anyhow`, `serde`/`serde_json`, `png` (images in events),
//! `plotters` (bitmap backend, `ab_glyph` text), `dejavu` (the chart font) and `gif`. No tensor library: values arrive as
//! `f64`, images as RGB bytes.
//!
//! A run directory written by [`Logger::for_run_dir`] looks like
//! `<run>/metrics.jsonl`, `<run>/metrics.csv`, `<run>/tb/events.out.tfevents.*`.
#![warn(missing_docs)]

mod plot;
mod sinks;
mod tb_reader;
mod tb_writer;
mod video;

pub use plot::{
    plot_bars_log, plot_curves, plot_curves_with_size, plot_font_available, DEFAULT_PLOT_SIZE, PLOT_FONT_ENV,
};
pub use sinks::{
    check_metric_name, CsvSink, JsonlSink, Logger, MetricSink, TensorBoardSink, CSV_FILE_NAME, JSONL_FILE_NAME,
    TB_DIR_NAME,
};
pub use tb_reader::{
    crc32c, find_event_files, masked_crc32c, read_records, read_scalars, read_scalars_in_dir, CrcMismatch, CrcPart,
    ScalarEvent,
};
pub use video::{frame_strip, write_gif};
