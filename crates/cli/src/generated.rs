//! Files generated from the protocol crate (schemas, NATS users, client
//! constants): written, or with `--check` compared, the same way for all.

use anyhow::Context as _;
use std::path::{Path, PathBuf};

/// Writes each `(path, text)` that differs from what is on disk, or with
/// `check` only lists them and fails naming `recipe` (e.g. `just codegen`).
pub(crate) fn write_or_check(
    files: Vec<(PathBuf, String)>,
    check: bool,
    recipe: &str,
) -> anyhow::Result<()> {
    let mut stale = Vec::new();
    for (path, text) in files {
        if std::fs::read_to_string(&path).ok().as_deref() == Some(text.as_str()) {
            continue;
        }
        if check {
            stale.push(path.display().to_string());
        } else {
            write(&path, &text)?;
            crate::say(format_args!("wrote {}", path.display()));
        }
    }
    anyhow::ensure!(
        stale.is_empty(),
        "stale: {}; run `{recipe}`",
        stale.join(", ")
    );
    Ok(())
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}
