//! The optional TOML settings file.
//!
//! The file has one table per subcommand whose keys are that subcommand's
//! long flag names (`flush-interval` or `flush_interval`). A value from the
//! file is used only when the flag is neither on the command line nor set
//! through its `ESTATE_*` environment variable. Unknown keys are errors, so
//! a typo never silently falls back to a default.

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::CommandFactory;

use crate::Cli;

/// Returns the process arguments with the file's settings spliced in after
/// the subcommand name.
pub(crate) fn merged_args(args: Vec<OsString>) -> anyhow::Result<Vec<OsString>> {
    let Some(path) = config_path(&args) else {
        return Ok(args);
    };
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading config file {}", path.display()))?;
    let doc: toml::Table = toml::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))?;
    let cmd = Cli::command();
    let strs: Vec<String> = args.iter().map(|a| a.to_string_lossy().into_owned()).collect();
    let Some(sub_pos) = strs.iter().position(|a| cmd.find_subcommand(a).is_some()) else {
        return Ok(args);
    };
    let sub_name = strs[sub_pos].clone();
    for key in doc.keys() {
        if cmd.find_subcommand(key).is_none() {
            bail!("config file {}: unknown section [{key}]", path.display());
        }
    }
    let Some(section) = doc.get(&sub_name) else {
        return Ok(args);
    };
    let section = section
        .as_table()
        .with_context(|| format!("config file {}: [{sub_name}] must be a table", path.display()))?;
    let sub = cmd.find_subcommand(&sub_name).expect("found above");
    // A nested subcommand (`estate dlq inspect`) takes the settings of its
    // parent's table (`[dlq]`); a key only a sibling has (`dry-run`) is skipped.
    let (sub, insert_at, siblings) = match strs.get(sub_pos + 1).and_then(|n| sub.find_subcommand(n)) {
        Some(leaf) => (leaf, sub_pos + 2, sub.get_subcommands().collect::<Vec<_>>()),
        None => (sub, sub_pos + 1, Vec::new()),
    };
    let mut injected: Vec<OsString> = Vec::new();
    for (key, value) in section {
        let long = key.replace('_', "-");
        let has = |c: &clap::Command| c.get_arguments().any(|a| a.get_long() == Some(long.as_str()));
        if !has(sub) && siblings.iter().any(|c| has(c)) {
            continue;
        }
        let arg = sub
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()))
            .with_context(|| format!("config file {}: [{sub_name}] has no setting {key:?}", path.display()))?;
        let on_cli = strs.iter().any(|a| a == &format!("--{long}") || a.starts_with(&format!("--{long}=")));
        let in_env = arg.get_env().is_some_and(|e| std::env::var_os(e).is_some());
        if on_cli || in_env {
            continue;
        }
        let values: Vec<String> = match value {
            toml::Value::Array(items) => items.iter().map(scalar).collect::<anyhow::Result<_>>()?,
            toml::Value::Boolean(b) => {
                if *b {
                    injected.push(format!("--{long}").into());
                }
                continue;
            }
            v => vec![scalar(v)?],
        };
        for v in values {
            injected.push(format!("--{long}={v}").into());
        }
    }
    let mut out = args;
    out.splice(insert_at..insert_at, injected);
    Ok(out)
}

fn scalar(v: &toml::Value) -> anyhow::Result<String> {
    Ok(match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        other => bail!("unsupported config value {other}"),
    })
}

fn config_path(args: &[OsString]) -> Option<PathBuf> {
    let mut it = args.iter().map(|a| a.to_string_lossy().into_owned());
    while let Some(a) = it.next() {
        if a == "--config" {
            return it.next().map(PathBuf::from);
        }
        if let Some(p) = a.strip_prefix("--config=") {
            return Some(PathBuf::from(p));
        }
    }
    std::env::var_os("ESTATE_CONFIG").map(PathBuf::from)
}
