//! Episode videos: animated GIFs (no external encoder needed) and frame strips for
//! TensorBoard. Frames are RGB, `height × width × 3` bytes, top row first.

use std::path::Path;

use anyhow::{ensure, Context, Result};

/// Writes `frames` (each `width × height` RGB) as a looping GIF playing at `fps` frames per
/// second. Colours are reduced to a palette per frame (NeuQuant).
pub fn write_gif<'a>(
    path: &Path,
    width: usize,
    height: usize,
    frames: impl IntoIterator<Item = &'a [u8]>,
    fps: u32,
) -> Result<usize> {
    ensure!(width > 0 && height > 0 && width <= 65535 && height <= 65535, "a GIF frame of {width} × {height}");
    let tmp = path.with_extension("gif.tmp");
    let file = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut encoder = gif::Encoder::new(std::io::BufWriter::new(file), width as u16, height as u16, &[])?;
    encoder.set_repeat(gif::Repeat::Infinite)?;
    // GIF delays are in hundredths of a second.
    let delay = (100 / fps.max(1)).max(2) as u16;
    let mut count = 0;
    for rgb in frames {
        ensure!(
            rgb.len() == width * height * 3,
            "frame {count} has {} bytes, expected {width} × {height} × 3",
            rgb.len()
        );
        let mut frame = gif::Frame::from_rgb_speed(width as u16, height as u16, rgb, 20);
        frame.delay = delay;
        encoder.write_frame(&frame)?;
        count += 1;
    }
    ensure!(count > 0, "no frames for {}", path.display());
    drop(encoder);
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(count)
}

/// Up to `count` evenly spaced frames of `frames` side by side: one image of
/// `count·width × height` that shows an episode at a glance.
pub fn frame_strip(width: usize, height: usize, frames: &[&[u8]], count: usize) -> Vec<u8> {
    let n = count.min(frames.len()).max(1);
    let picks: Vec<&[u8]> =
        (0..n).filter_map(|i| frames.get(if n == 1 { 0 } else { i * (frames.len() - 1) / (n - 1) })).copied().collect();
    let row = width * 3;
    let mut out = Vec::with_capacity(picks.len() * row * height);
    for y in 0..height {
        for f in &picks {
            out.extend_from_slice(&f[y * row..(y + 1) * row]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gif_has_every_frame_and_a_strip_their_pixels() {
        let dir = tempfile::tempdir().unwrap();
        let (w, h) = (8, 4);
        let frames: Vec<Vec<u8>> = (0..5u8).map(|k| vec![k * 50; w * h * 3]).collect();
        let path = dir.path().join("ep.gif");
        let n = write_gif(&path, w, h, frames.iter().map(|f| f.as_slice()), 20).unwrap();
        assert_eq!(n, 5);
        let mut decoder = gif::DecodeOptions::new().read_info(std::fs::File::open(&path).unwrap()).unwrap();
        let mut decoded = 0;
        while let Some(f) = decoder.read_next_frame().unwrap() {
            assert_eq!((f.width, f.height, f.delay), (8, 4, 5));
            decoded += 1;
        }
        assert_eq!(decoded, 5);
        let refs: Vec<&[u8]> = frames.iter().map(|f| f.as_slice()).collect();
        let strip = frame_strip(w, h, &refs, 3);
        assert_eq!(strip.len(), 3 * w * h * 3);
        // Frames 0, 2 and 4 in the first row.
        assert_eq!((strip[0], strip[w * 3], strip[2 * w * 3]), (0, 100, 200));
        assert!(write_gif(&path, w, h, [&[0u8; 3][..]], 20).is_err());
    }
}
