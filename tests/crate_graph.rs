//! The workspace's crate graph, read from the Cargo.toml files: it may only change on purpose.
//!
//! Rules: spec, replay, envs and logging are leaves; spec holds the types both sides of the
//! deployment boundary share, so nn and infer build on it alone (actor and critic on nn and spec);
//! data reads into replay's `Dataset` with envs' tools; actor and critic build on nn and never
//! on each other or on the native engine; only agent (export and the native updates), train
//! (native acting and exported policies) and cli reach infer; the agent never reaches rollouts
//! or logging (envs only in its tests, for the project's Python); nothing depends on cli.
//! A new edge fails here until `ALLOWED` says it is meant.

use std::collections::BTreeMap;
use std::path::Path;

/// Each crate's allowed mvp dependencies (normal and dev), by directory under crates/.
const ALLOWED: &[(&str, &[&str])] = &[
    ("spec", &[]),
    ("infer", &["spec"]),
    ("nn", &["spec"]),
    ("logging", &[]),
    ("replay", &[]),
    ("envs", &[]),
    ("data", &["replay", "envs"]),
    ("actor", &["nn", "spec"]),
    ("critic", &["nn", "spec"]),
    ("rollout", &["envs", "replay"]),
    ("agent", &["nn", "infer", "actor", "critic", "replay", "data", "envs"]),
    ("train", &["nn", "infer", "agent", "replay", "envs", "data", "rollout", "logging"]),
    ("cli", &["nn", "infer", "actor", "agent", "train", "replay", "envs", "data", "logging"]),
];

/// The mvp crates each crate depends on (`[dependencies]` and `[dev-dependencies]`).
fn graph() -> BTreeMap<String, Vec<String>> {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut graph = BTreeMap::new();
    for entry in std::fs::read_dir(&crates).unwrap() {
        let dir = entry.unwrap().path();
        let Ok(text) = std::fs::read_to_string(dir.join("Cargo.toml")) else { continue };
        let manifest: toml::Table = text.parse().unwrap();
        let mut deps: Vec<String> = ["dependencies", "dev-dependencies"]
            .iter()
            .filter_map(|t| manifest.get(*t).and_then(|v| v.as_table()))
            .flat_map(|t| t.keys())
            .filter_map(|k| k.strip_prefix("mvp-").map(String::from))
            .collect();
        deps.sort();
        deps.dedup();
        graph.insert(dir.file_name().unwrap().to_string_lossy().into_owned(), deps);
    }
    graph
}

#[test]
fn the_crate_graph_has_only_the_allowed_edges() {
    let graph = graph();
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut wrong = Vec::new();
    for (krate, deps) in &graph {
        let Some(ok) = allowed.get(krate.as_str()) else {
            wrong.push(format!("crates/{krate} is new: add its allowed dependencies to ALLOWED"));
            continue;
        };
        for d in deps.iter().filter(|d| !ok.contains(&d.as_str())) {
            wrong.push(format!("{krate} → {d}"));
        }
    }
    assert!(wrong.is_empty(), "edges outside the allowed crate graph: {}\n(graph: {graph:?})", wrong.join(", "));
    // The named rules hold in ALLOWED itself.
    for (krate, ok) in ALLOWED {
        assert!(!ok.contains(&"cli"), "{krate} → cli");
        assert!(!ok.contains(&"infer") || ["agent", "train", "cli"].contains(krate), "{krate} → infer");
    }
    assert!(!allowed["actor"].contains(&"critic") && !allowed["critic"].contains(&"actor"));
    assert!(allowed["spec"].is_empty(), "spec is a leaf");
}
