//! `switchyard schemas [--out DIR] [--check]`

use anyhow::Context as _;
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub(crate) struct SchemasArgs {
    /// Where to write `<name>.json`.
    #[arg(long, default_value = "docs/schemas")]
    out: PathBuf,
    /// Only report files that differ; exit 1 if any does.
    #[arg(long)]
    check: bool,
}

pub(crate) fn run(args: SchemasArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let mut stale = Vec::new();
    for (name, schema) in protocol::schema::all() {
        let path = args.out.join(format!("{name}.json"));
        let text = protocol::schema::render(&schema);
        if std::fs::read_to_string(&path).ok().as_deref() == Some(text.as_str()) {
            continue;
        }
        if args.check {
            stale.push(path.display().to_string());
        } else {
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
            crate::say(format_args!("wrote {}", path.display()));
        }
    }
    anyhow::ensure!(
        stale.is_empty(),
        "stale schemas: {}; run `just schemas`",
        stale.join(", ")
    );
    Ok(())
}
