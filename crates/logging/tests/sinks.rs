//! JSONL/CSV sinks and the fan-out logger.

use std::fs;

use mvp_logging::{read_scalars_in_dir, CsvSink, JsonlSink, Logger, MetricSink, CSV_FILE_NAME, JSONL_FILE_NAME};
use serde_json::Value;

fn jsonl_rows(path: &std::path::Path) -> Vec<serde_json::Map<String, Value>> {
    fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| match serde_json::from_str::<Value>(l).unwrap() {
            Value::Object(m) => m,
            other => panic!("row is not an object: {other}"),
        })
        .collect()
}

#[test]
fn jsonl_sink_writes_parseable_rows_and_appends_on_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut sink = JsonlSink::open(dir.path()).unwrap();
        sink.log_scalars(1, &[("critic/q_mean", 1.5), ("actor/mf_loss", -0.25)]).unwrap();
        sink.log_scalars(2, &[("critic/q_mean", 1e300), ("eval/success", f64::NAN)]).unwrap();
        sink.flush().unwrap();
    }
    {
        let mut sink = JsonlSink::open(dir.path()).unwrap();
        sink.log_scalars(3, &[("time/sps", 1234.5)]).unwrap();
    } // drop flushes
    let rows = jsonl_rows(&dir.path().join(JSONL_FILE_NAME));
    assert_eq!(rows.len(), 3);
    let steps: Vec<u64> = rows.iter().map(|r| r["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, [1, 2, 3]);
    for r in &rows {
        assert!(r["wall_time"].as_f64().unwrap() > 1.6e9);
    }
    assert_eq!(rows[0]["critic/q_mean"], 1.5);
    assert_eq!(rows[0]["actor/mf_loss"], -0.25);
    assert_eq!(rows[1]["critic/q_mean"], 1e300);
    assert_eq!(rows[1]["eval/success"], Value::Null, "NaN is written as null");
    assert_eq!(rows[2]["time/sps"], 1234.5);
    // `step` and `wall_time` come first on every line.
    let text = fs::read_to_string(dir.path().join(JSONL_FILE_NAME)).unwrap();
    assert!(text.lines().all(|l| l.starts_with("{\"step\":")));
}

#[test]
fn jsonl_sink_starts_a_new_line_after_a_partial_last_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(JSONL_FILE_NAME);
    fs::write(&path, "{\"step\":1,\"wall_time\":1.0,\"a/b\":1.0}\n{\"step\":2,\"wall_").unwrap();
    let mut sink = JsonlSink::open(dir.path()).unwrap();
    sink.log_scalars(3, &[("a/b", 3.0)]).unwrap();
    sink.flush().unwrap();
    let text = fs::read_to_string(&path).unwrap();
    let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(last["step"], 3);
    assert_eq!(last["a/b"], 3.0);
}

#[test]
fn csv_sink_writes_long_format_rows_and_header_once() {
    let dir = tempfile::tempdir().unwrap();
    for (step, name, value) in [(1u64, "critic/q_mean", 0.5), (2, "eval/success", 1.0)] {
        // A new sink each time: the header must still appear only once.
        let mut sink = CsvSink::open(dir.path()).unwrap();
        sink.log_scalars(step, &[(name, value), ("odd,name\"x", f64::INFINITY)]).unwrap();
        sink.flush().unwrap();
    }
    let text = fs::read_to_string(dir.path().join(CSV_FILE_NAME)).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "step,wall_time,name,value");
    assert_eq!(lines.iter().filter(|l| l.starts_with("step,")).count(), 1);
    assert_eq!(lines.len(), 5);
    let parse = |line: &str| -> (u64, f64, String, f64) {
        // Minimal RFC 4180 split: the name may be quoted.
        let (step, rest) = line.split_once(',').unwrap();
        let (wall, rest) = rest.split_once(',').unwrap();
        let (name, value) = rest.rsplit_once(',').unwrap();
        let name = if let Some(q) = name.strip_prefix('"') {
            q.strip_suffix('"').unwrap().replace("\"\"", "\"")
        } else {
            name.to_string()
        };
        (step.parse().unwrap(), wall.parse().unwrap(), name, value.parse().unwrap())
    };
    let rows: Vec<_> = lines[1..].iter().map(|l| parse(l)).collect();
    assert_eq!((rows[0].0, rows[0].2.as_str(), rows[0].3), (1, "critic/q_mean", 0.5));
    assert_eq!((rows[1].0, rows[1].2.as_str(), rows[1].3), (1, "odd,name\"x", f64::INFINITY));
    assert_eq!((rows[2].0, rows[2].2.as_str(), rows[2].3), (2, "eval/success", 1.0));
    assert!(rows.iter().all(|r| r.1 > 1.6e9));
}

#[test]
fn csv_sink_refuses_a_file_with_another_header() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join(CSV_FILE_NAME), "step,loss\n1,0.5\n").unwrap();
    let err = CsvSink::open(dir.path()).err().expect("must refuse");
    assert!(format!("{err:#}").contains("header"), "{err:#}");
}

#[test]
fn logger_fans_out_to_every_sink_and_keeps_latest_values() {
    let dir = tempfile::tempdir().unwrap();
    let mut logger = Logger::for_run_dir(dir.path()).unwrap();
    assert_eq!(logger.num_sinks(), 3);
    logger.log(10, &[("critic/q_mean", 1.0), ("time/sps", 100.0)]).unwrap();
    logger.log(20, &[("critic/q_mean", 2.0)]).unwrap();
    assert_eq!(logger.latest("critic/q_mean"), Some(2.0));
    assert_eq!(logger.latest("time/sps"), Some(100.0));
    assert_eq!(logger.latest("eval/success"), None);
    assert_eq!(logger.latest_all()["critic/q_mean"], (20, 2.0));
    logger.close().unwrap();

    assert_eq!(jsonl_rows(&dir.path().join(JSONL_FILE_NAME)).len(), 2);
    let csv = fs::read_to_string(dir.path().join(CSV_FILE_NAME)).unwrap();
    assert_eq!(csv.lines().count(), 1 + 3);
    let tb: Vec<(i64, String, f32)> =
        read_scalars_in_dir(dir.path().join("tb")).unwrap().into_iter().map(|e| (e.step, e.tag, e.value)).collect();
    assert_eq!(
        tb,
        [
            (10, "critic/q_mean".to_string(), 1.0),
            (10, "time/sps".to_string(), 100.0),
            (20, "critic/q_mean".to_string(), 2.0)
        ]
    );
}

#[test]
fn logger_rejects_bad_names_before_writing_anything() {
    let dir = tempfile::tempdir().unwrap();
    let mut logger = Logger::new().with_sink(JsonlSink::open(dir.path()).unwrap());
    for bad in [
        &[("step", 1.0)][..],
        &[("wall_time", 1.0)],
        &[("", 1.0)],
        &[("a\nb", 1.0)],
        &[("critic/q_mean", 1.0), ("critic/q_mean", 2.0)],
    ] {
        assert!(logger.log(1, bad).is_err(), "{bad:?} must be refused");
    }
    assert!(logger.latest_all().is_empty());
    logger.flush().unwrap();
    assert_eq!(fs::read_to_string(dir.path().join(JSONL_FILE_NAME)).unwrap(), "");
}
