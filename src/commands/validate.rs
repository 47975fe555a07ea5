//! `weir validate FILE`.

use std::path::Path;
use std::process::ExitCode;

use weir_connectors::Registry;
use weir_engine::topology::{load_file, ConfigIssue};

/// Exit code of a topology with problems.
pub const INVALID_TOPOLOGY: u8 = 2;

/// Prints every problem of the topology at `file`, one per line with its YAML path.
pub fn report(file: &Path, issues: &[ConfigIssue]) {
    eprintln!("{}: {} problem(s)", file.display(), issues.len());
    for issue in issues {
        eprintln!("  {}: {}", issue.path, issue.message);
    }
}

/// Checks `file`; exit code 2 if it has problems.
pub fn validate(file: &Path) -> anyhow::Result<ExitCode> {
    match load_file(file, &Registry) {
        Ok(topology) => {
            println!(
                "{}: ok ({} source(s), {} pipeline(s), {} sink(s))",
                file.display(),
                topology.sources.len(),
                topology.pipelines.len(),
                topology.sinks.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(issues) => {
            report(file, &issues);
            Ok(ExitCode::from(INVALID_TOPOLOGY))
        }
    }
}
