//! PNG plots: valid files with the requested size and visible curves.

use std::fs::File;

use mvp_logging::{plot_curves, plot_curves_with_size, plot_font_available, DEFAULT_PLOT_SIZE};

/// Decodes a PNG; returns (width, height, RGB(A) pixels, channels).
fn decode(path: &std::path::Path) -> (u32, u32, Vec<u8>, usize) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
    let decoder = png::Decoder::new(File::open(path).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    (info.width, info.height, buf, info.color_type.samples())
}

fn curves() -> Vec<(&'static str, Vec<(f64, f64)>)> {
    let line = |a: f64| (0..100).map(|i| (i as f64 * 1000.0, a * (i as f64 / 10.0).sin())).collect();
    vec![("mvp", line(1.0)), ("fql", line(0.5)), ("with gap", vec![(0.0, 0.0), (1.0, f64::NAN), (5e4, 0.9)])]
}

#[test]
fn plot_writes_valid_png_with_requested_size() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plots/return.png");
    plot_curves_with_size(&path, "eval/return", &curves(), "env steps", "return", (640, 400)).unwrap();
    let (w, h, pixels, channels) = decode(&path);
    assert_eq!((w, h), (640, 400));
    // The first two series colours (tab10 blue and orange) appear.
    let has = |rgb: [u8; 3]| pixels.chunks(channels).any(|p| p[..3] == rgb);
    assert!(has([31, 119, 180]) && has([255, 127, 14]));

    let path = dir.path().join("default.png");
    plot_curves(&path, "critic/q_mean", &curves(), "step", "Q").unwrap();
    assert_eq!(decode(&path).0, DEFAULT_PLOT_SIZE.0);
    assert_eq!(decode(&path).1, DEFAULT_PLOT_SIZE.1);
}

#[test]
fn plot_text_is_rendered_with_the_bundled_font() {
    // No system font is needed: DejaVu Sans ships in the binary.
    assert!(plot_font_available());
    // Text adds dark pixels in the title and label areas outside the data region.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("text.png");
    plot_curves_with_size(&path, "TITLE", &[("x", vec![(0.0, 0.0), (1.0, 1.0)])], "x", "y", (400, 300)).unwrap();
    let (w, _, pixels, channels) = decode(&path);
    let top_rows = &pixels[..(w as usize) * channels * 30];
    assert!(top_rows.chunks(channels).any(|p| p[0] < 100 && p[1] < 100 && p[2] < 100));
}

#[test]
fn plot_of_empty_or_non_finite_series_still_writes_a_png() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.png");
    plot_curves(&path, "nothing", &[("a", vec![]), ("b", vec![(f64::NAN, 1.0)])], "x", "y").unwrap();
    assert_eq!(decode(&path).0, DEFAULT_PLOT_SIZE.0);
}
