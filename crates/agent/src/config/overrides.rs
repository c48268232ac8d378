//! `--set KEY=VALUE` overrides applied to a config's TOML tree before it is deserialised.

use anyhow::{Context, Result};

/// Sets `a.b.c = value` in a TOML tree; the value is parsed as TOML (numbers, booleans,
/// strings in quotes, arrays) and taken as a bare string otherwise.
pub(super) fn apply_override(root: &mut toml::Value, assignment: &str) -> Result<()> {
    let (key, raw) = assignment.split_once('=').with_context(|| format!("override `{assignment}` is not KEY=VALUE"))?;
    let key = key.trim();
    let value: toml::Value = toml::from_str::<toml::Table>(&format!("v = {}", raw.trim()))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.trim().to_string()));
    let parts: Vec<&str> = key.split('.').collect();
    let mut node = root;
    for p in &parts[..parts.len() - 1] {
        let table = node.as_table_mut().with_context(|| format!("override `{key}`: `{p}` is not a table"))?;
        node = table.entry(p.to_string()).or_insert_with(|| toml::Value::Table(Default::default()));
    }
    let table = node.as_table_mut().with_context(|| format!("override `{key}`: parent is not a table"))?;
    table.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}
