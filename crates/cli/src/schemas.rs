//! `switchyard schemas [--out DIR] [--check]`

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
    let files = protocol::schema::all()
        .into_iter()
        .map(|(name, schema)| {
            let path = args.out.join(format!("{name}.json"));
            (path, protocol::schema::render(&schema))
        })
        .collect();
    crate::generated::write_or_check(files, args.check, "just schemas")
}
