//! The robomimic HDF5 reader on small files written here with hdf5-metno in robomimic's layout
//! (float64 arrays, int64 dones, byte-string masks, a JSON `env_args` attribute). The reader on
//! files written by h5py (`python -m mvp_envs.data_robomimic`) is tested in
//! crates/data/tests/robomimic.rs.

use std::path::Path;
use std::str::FromStr;

use hdf5::types::{FixedAscii, VarLenUnicode};
use mvp_data::{read_robomimic, RobomimicError, RobomimicFilter, RobomimicOptions};

/// One demo: T steps, action width 2, keys robot0_eef_pos (3), robot0_eef_quat (4),
/// robot0_gripper_qpos (2), object (1-D per step when `object_1d`), values encoding
/// (demo, step, key, column) so that the concatenation order is checkable.
struct Demo {
    name: &'static str,
    t: usize,
    success_at_end: bool,
}

const KEYS: [(&str, usize); 4] =
    [("robot0_eef_pos", 3), ("robot0_eef_quat", 4), ("robot0_gripper_qpos", 2), ("object", 5)];

fn value(demo: usize, step: usize, key: usize, col: usize, next: bool) -> f64 {
    (demo * 1000 + step * 100 + key * 10 + col) as f64 + if next { 0.5 } else { 0.0 }
}

fn write_f64(g: &hdf5::Group, name: &str, shape: &[usize], data: &[f64]) {
    g.new_dataset::<f64>().shape(shape.to_vec()).create(name).unwrap().write_raw(data).unwrap();
}

fn write_file(path: &Path, demos: &[Demo], skip: Option<&str>, masks: &[(&str, &[&str])]) {
    let file = hdf5::File::create(path).unwrap();
    let data = file.create_group("data").unwrap();
    let args = VarLenUnicode::from_str(r#"{"env_name": "Lift", "env_version": "1.4.1", "type": 1, "env_kwargs": {}}"#)
        .unwrap();
    data.new_attr::<VarLenUnicode>().create("env_args").unwrap().write_scalar(&args).unwrap();
    for (d, demo) in demos.iter().enumerate() {
        let g = data.create_group(demo.name).unwrap();
        let t = demo.t;
        let actions: Vec<f64> = (0..t * 2).map(|i| (d * 1000 + i) as f64 * 0.25).collect();
        if skip != Some("actions") {
            write_f64(&g, "actions", &[t, 2], &actions);
        }
        let mut rewards = vec![0.0; t];
        let mut dones = vec![0i64; t];
        if demo.success_at_end {
            rewards[t - 1] = 1.0;
        }
        dones[t - 1] = 1;
        write_f64(&g, "rewards", &[t], &rewards);
        g.new_dataset::<i64>().shape([t]).create("dones").unwrap().write_raw(&dones).unwrap();
        write_f64(&g, "states", &[t, 7], &vec![0.0; t * 7]);
        for (group, next) in [("obs", false), ("next_obs", true)] {
            let og = g.create_group(group).unwrap();
            for (k, (key, w)) in KEYS.iter().enumerate() {
                if skip == Some(&format!("{group}/{key}")) {
                    continue;
                }
                let v: Vec<f64> = (0..t).flat_map(|s| (0..*w).map(move |c| value(d, s, k, c, next))).collect();
                write_f64(&og, key, &[t, *w], &v);
            }
        }
    }
    if !masks.is_empty() {
        let mask = file.create_group("mask").unwrap();
        for (name, demos) in masks {
            let v: Vec<FixedAscii<7>> = demos.iter().map(|s| FixedAscii::from_ascii(s.as_bytes()).unwrap()).collect();
            mask.new_dataset::<FixedAscii<7>>().shape([v.len()]).create(*name).unwrap().write_raw(&v).unwrap();
        }
    }
}

fn two_demos() -> Vec<Demo> {
    vec![Demo { name: "demo_0", t: 3, success_at_end: true }, Demo { name: "demo_1", t: 2, success_at_end: false }]
}

#[test]
fn reads_robomimic_layout_with_mvp_conventions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lift.hdf5");
    write_file(&path, &two_demos(), None, &[]);
    let data = read_robomimic(&path, &RobomimicOptions::default()).unwrap();
    let ds = &data.dataset;
    assert_eq!((ds.len(), ds.obs_dim, ds.act_dim), (5, 14, 2));
    assert_eq!(data.demos, vec!["demo_0", "demo_1"]);
    assert_eq!(data.demo_lengths, vec![3, 2]);
    assert_eq!(data.env_name().as_deref(), Some("Lift"));
    assert_eq!(data.obs_key_dims, KEYS.iter().map(|(k, w)| (k.to_string(), *w)).collect::<Vec<_>>());
    // r - 1; masks 0 at success or done; terminals at the end of each demo.
    assert_eq!(ds.rewards, vec![-1.0, -1.0, 0.0, -1.0, -1.0]);
    assert_eq!(ds.masks, vec![1.0, 1.0, 0.0, 1.0, 0.0]);
    assert_eq!(ds.terminals, vec![0.0, 0.0, 1.0, 0.0, 1.0]);
    // Observation of demo 1, step 1: the keys in order, then next_obs.
    let row = &ds.observations[4 * 14..5 * 14];
    let want: Vec<f32> =
        KEYS.iter().enumerate().flat_map(|(k, (_, w))| (0..*w).map(move |c| value(1, 1, k, c, false) as f32)).collect();
    assert_eq!(row, want.as_slice());
    assert_eq!(ds.next_observations[4 * 14], value(1, 1, 0, 0, true) as f32);
    assert_eq!(&ds.actions[..2], &[0.0, 0.25]);
    assert_eq!(&ds.actions[6..8], &[250.0, 250.25]);
}

#[test]
fn filter_keys_select_mask_demos_in_numeric_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lift.hdf5");
    let demos = vec![
        Demo { name: "demo_0", t: 2, success_at_end: true },
        Demo { name: "demo_2", t: 3, success_at_end: true },
        Demo { name: "demo_10", t: 4, success_at_end: true },
    ];
    write_file(&path, &demos, None, &[("train", &["demo_10", "demo_2"]), ("valid", &["demo_0"])]);
    let read = |filter| read_robomimic(&path, &RobomimicOptions { filter, ..Default::default() }).unwrap();
    let all = read(RobomimicFilter::All);
    assert_eq!(all.demos, vec!["demo_0", "demo_2", "demo_10"], "numeric, not lexicographic");
    assert_eq!(all.dataset.len(), 9);
    let train = read(RobomimicFilter::from_str("train").unwrap());
    assert_eq!(train.demos, vec!["demo_2", "demo_10"]);
    assert_eq!(train.demo_lengths, vec![3, 4]);
    let valid = read(RobomimicFilter::Valid);
    assert_eq!(valid.demos, vec!["demo_0"]);
    assert_eq!(valid.dataset.terminals, vec![0.0, 1.0]);
    let err = read_robomimic(
        &path,
        &RobomimicOptions { filter: RobomimicFilter::from_str("20_percent").unwrap(), ..Default::default() },
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("missing dataset `mask/20_percent`") && err.contains("train, valid"), "{err}");
}

#[test]
fn missing_file_names_the_command_that_makes_it() {
    let err = read_robomimic("/nonexistent/square/low_dim.hdf5", &RobomimicOptions::default()).unwrap_err();
    assert!(matches!(err, RobomimicError::MissingFile { .. }));
    let msg = err.to_string();
    assert!(!msg.contains('\n'), "one line: {msg}");
    assert!(
        msg.contains("mvp data robomimic --task square --episodes 200 --out /nonexistent/square/low_dim.hdf5"),
        "{msg}"
    );
    let opts = RobomimicOptions { task: Some("can".into()), ..Default::default() };
    let msg = read_robomimic("/nonexistent/x.hdf5", &opts).unwrap_err().to_string();
    assert!(msg.contains("--task can"), "{msg}");
}

#[test]
fn missing_key_error_names_the_hdf5_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.hdf5");
    write_file(&path, &two_demos(), Some("next_obs/object"), &[]);
    let err = read_robomimic(&path, &RobomimicOptions::default()).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, RobomimicError::BadFile { .. }), "{msg}");
    assert!(msg.contains("missing dataset `data/demo_0/next_obs/object`"), "{msg}");
    assert!(msg.contains("robot0_eef_pos"), "lists what is there: {msg}");

    write_file(&path, &two_demos(), Some("actions"), &[]);
    let msg = read_robomimic(&path, &RobomimicOptions::default()).unwrap_err().to_string();
    assert!(msg.contains("missing dataset `data/demo_0/actions`"), "{msg}");

    // An observation key the caller asks for that the file does not have.
    write_file(&path, &two_demos(), None, &[]);
    let opts =
        RobomimicOptions { obs_keys: vec!["robot0_eef_pos".into(), "robot0_joint_pos".into()], ..Default::default() };
    let msg = read_robomimic(&path, &opts).unwrap_err().to_string();
    assert!(msg.contains("missing dataset `data/demo_0/obs/robot0_joint_pos`"), "{msg}");
}

#[test]
fn wrong_shapes_are_reported_with_both_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.hdf5");
    write_file(&path, &two_demos(), None, &[]);
    {
        // rewards of demo_1 one step short.
        let file = hdf5::File::open_rw(&path).unwrap();
        let g = file.group("data/demo_1").unwrap();
        g.unlink("rewards").unwrap();
        write_f64(&g, "rewards", &[1], &[0.0]);
        // object of demo_1 narrower than demo_0's.
        let og = g.group("obs").unwrap();
        og.unlink("object").unwrap();
        write_f64(&og, "object", &[2, 4], &[0.0; 8]);
    }
    let msg = read_robomimic(&path, &RobomimicOptions::default()).unwrap_err().to_string();
    assert!(msg.contains("`data/demo_1/rewards` has shape [1], expected [2]"), "{msg}");

    {
        let file = hdf5::File::open_rw(&path).unwrap();
        let g = file.group("data/demo_1").unwrap();
        g.unlink("rewards").unwrap();
        write_f64(&g, "rewards", &[2], &[0.0; 2]);
    }
    let msg = read_robomimic(&path, &RobomimicOptions::default()).unwrap_err().to_string();
    assert!(msg.contains("`data/demo_1/obs/object` has shape [2, 4], expected [2, 5]"), "{msg}");
}
