//! With `MVP_PLOT_FONT=none` plots are drawn without text. Its own test binary, because
//! the font choice is made once per process.

use mvp_logging::{plot_curves_with_size, plot_font_available, PLOT_FONT_ENV};

#[test]
fn plot_without_font_still_draws_the_curves() {
    std::env::set_var(PLOT_FONT_ENV, "none");
    assert!(!plot_font_available());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no_text.png");
    let pts: Vec<(f64, f64)> = (0..50).map(|i| (i as f64, (i * i) as f64)).collect();
    plot_curves_with_size(&path, "t", &[("a", pts)], "x", "y", (300, 200)).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    // IHDR is the first chunk: width and height are big-endian u32 at bytes 16..24.
    assert_eq!(u32::from_be_bytes(bytes[16..20].try_into().unwrap()), 300);
    assert_eq!(u32::from_be_bytes(bytes[20..24].try_into().unwrap()), 200);
    let mut reader = png::Decoder::new(std::io::Cursor::new(bytes)).read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let ch = info.color_type.samples();
    assert!(buf[..info.buffer_size()].chunks(ch).any(|p| p[..3] == [31, 119, 180]));
}
