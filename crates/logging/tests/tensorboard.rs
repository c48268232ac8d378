//! TensorBoardSink (our own event-file writer) read back with our own event-file reader.

use std::fs;
use std::time::{SystemTime, UNIX_EPOCH};

use mvp_logging::{
    find_event_files, read_records, read_scalars, read_scalars_in_dir, CrcMismatch, MetricSink, TensorBoardSink,
};

/// Writes a few steps and returns the sink's directory and what was logged.
fn write_event_file(dir: &std::path::Path) -> Vec<(i64, String, f32)> {
    let logged: Vec<(u64, Vec<(&str, f64)>)> = vec![
        (0, vec![("critic/q_mean", 0.1), ("actor/mf_loss", -2.5)]),
        (1, vec![("critic/q_mean", 0.2), ("time/sps", 1234.0)]),
        (1000, vec![("eval/success", 0.75), ("critic/q_mean", 1e-7)]),
        (u64::from(u32::MAX) + 7, vec![("critic/q_mean", -3.0e8)]),
    ];
    let mut sink = TensorBoardSink::new(dir).unwrap();
    for (step, scalars) in &logged {
        sink.log_scalars(*step, scalars).unwrap();
    }
    sink.flush().unwrap();
    sink.close().unwrap();
    logged
        .iter()
        .flat_map(|(step, scalars)| scalars.iter().map(move |(tag, v)| (*step as i64, tag.to_string(), *v as f32)))
        .collect()
}

#[test]
fn tensorboard_event_file_is_read_back_with_crcs_checked() {
    let dir = tempfile::tempdir().unwrap();
    let tb = dir.path().join("tb");
    let expected = write_event_file(&tb);

    let files = find_event_files(dir.path()).unwrap();
    assert_eq!(files.len(), 1, "{files:?}");
    let name = files[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with("events.out.tfevents."), "{name}");
    assert!(name.ends_with(&format!(".{}.0", std::process::id())), "{name}");

    let events = read_scalars(&files[0]).unwrap();
    let got: Vec<(i64, String, f32)> = events.iter().map(|e| (e.step, e.tag.clone(), e.value)).collect();
    assert_eq!(got, expected);

    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
    for e in &events {
        assert!(e.wall_time > now - 600.0 && e.wall_time <= now + 1.0, "{e:?}");
    }
    // The file starts with the `brain.Event:2` file_version record, which has no scalars;
    // then one event per logged step, holding that step's scalars.
    assert_eq!(read_records(&files[0]).unwrap().len(), 1 + 4);
    assert_eq!(read_scalars_in_dir(dir.path()).unwrap(), events);
}

#[test]
fn corrupted_byte_in_event_file_makes_reader_fail_with_crc_error() {
    let dir = tempfile::tempdir().unwrap();
    write_event_file(dir.path());
    let path = find_event_files(dir.path()).unwrap().remove(0);
    let good = fs::read(&path).unwrap();
    assert!(read_scalars(&path).is_ok());

    // Every single-byte corruption, in lengths, data or checksums, is caught by a CRC.
    let bad_path = dir.path().join("corrupt.tfevents");
    for pos in 0..good.len() {
        let mut bad = good.clone();
        bad[pos] ^= 0x5a;
        fs::write(&bad_path, &bad).unwrap();
        let err = read_scalars(&bad_path).expect_err("corruption must be detected");
        let crc = err.downcast_ref::<CrcMismatch>();
        assert!(crc.is_some(), "byte {pos}: not a CRC error: {err:#}");
        assert!(err.to_string().contains("CRC mismatch"), "{err}");
    }
}

#[test]
fn reopening_tensorboard_sink_in_same_dir_keeps_both_event_files() {
    let dir = tempfile::tempdir().unwrap();
    for step in [1u64, 2] {
        // Two sinks of one process in the same second: each gets a file of its own.
        let mut sink = TensorBoardSink::new(dir.path()).unwrap();
        sink.log_scalars(step, &[("time/sps", step as f64)]).unwrap();
        sink.close().unwrap();
    }
    assert_eq!(find_event_files(dir.path()).unwrap().len(), 2);
    let steps: Vec<i64> = read_scalars_in_dir(dir.path()).unwrap().iter().map(|e| e.step).collect();
    assert_eq!(steps, [1, 2]);
}

#[test]
fn images_are_stored_as_png_events_beside_the_scalars() {
    let dir = tempfile::tempdir().unwrap();
    let mut sink = TensorBoardSink::new(dir.path()).unwrap();
    let rgb: Vec<u8> = (0..4 * 2 * 3).map(|i| (i * 10) as u8).collect();
    sink.log_image("video/episode_0", 5, 4, 2, &rgb).unwrap();
    sink.log_scalars(5, &[("eval/success", 1.0)]).unwrap();
    assert!(sink.log_image("video/bad", 5, 4, 2, &rgb[1..]).is_err(), "a short image is refused");
    sink.close().unwrap();
    let file = find_event_files(dir.path()).unwrap().remove(0);
    let records = read_records(&file).unwrap();
    assert_eq!(records.len(), 3, "version, image, scalar");
    let image = &records[1];
    let png_at = image.windows(4).position(|w| w == b"\x89PNG").expect("a PNG inside the image event");
    assert!(image[..png_at].windows(15).any(|w| w == b"video/episode_0"));
    assert_eq!(read_scalars(&file).unwrap().len(), 1);
}

#[test]
fn closed_tensorboard_sink_refuses_more_scalars() {
    let dir = tempfile::tempdir().unwrap();
    let mut sink = TensorBoardSink::new(dir.path()).unwrap();
    sink.close().unwrap();
    assert!(sink.log_scalars(1, &[("a/b", 1.0)]).is_err());
    sink.flush().unwrap();
}
