//! `switchyard codegen [python|docs] [--check]`: the files generated from the
//! protocol crate's constants and service manifests (see `protocol::codegen`):
//! the Python client's `_generated.py` and the subject table of
//! `docs/CONTRACT.md`. Without a target, both.

use anyhow::Context as _;
use protocol::codegen;
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Target {
    /// clients/python/src/switchyard/_generated.py
    Python,
    /// The generated subject table of docs/CONTRACT.md
    Docs,
}

#[derive(Debug, clap::Args)]
pub(crate) struct CodegenArgs {
    /// What to generate (default: everything).
    #[arg(value_enum)]
    target: Option<Target>,
    /// The repository root the files live under.
    #[arg(long, default_value = ".")]
    root: PathBuf,
    /// Only report files that differ; exit 1 if any does.
    #[arg(long)]
    check: bool,
}

/// `(path, wanted contents)` of each target.
fn render(args: &CodegenArgs) -> anyhow::Result<Vec<(PathBuf, String)>> {
    let mut out = Vec::new();
    if matches!(args.target, None | Some(Target::Python)) {
        out.push((args.root.join(codegen::PYTHON_PATH), codegen::python()));
    }
    if matches!(args.target, None | Some(Target::Docs)) {
        let path = args.root.join(codegen::CONTRACT_PATH);
        let doc = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let text = codegen::splice(&doc, &codegen::docs_table()).with_context(|| {
            format!(
                "{} has no {} … {} markers",
                path.display(),
                codegen::DOCS_BEGIN,
                codegen::DOCS_END
            )
        })?;
        out.push((path, text));
    }
    Ok(out)
}

pub(crate) fn run(args: CodegenArgs) -> anyhow::Result<()> {
    let files = render(&args)?;
    crate::generated::write_or_check(files, args.check, "just codegen")
}
