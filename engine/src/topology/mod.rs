//! The topology model, its loading from YAML and its validation.
//!
//! [`load_file`] / [`load_str`] turn `topology.yaml` into a [`Topology`]: `${VAR}` and
//! `${VAR:-default}` are substituted from the environment, each component is parsed on its
//! own, and every problem found — syntax, types, unknown fields, dangling references, invalid
//! windows, aggregates or CEL expressions, connector options — is returned at once as a
//! [`ConfigIssue`] with its dotted YAML path. [`json_schema`] describes the file for editors.

mod duration;
mod env;
mod load;
mod model;
mod schema;
mod size;

pub use duration::Duration;
pub use load::{load_file, load_str, load_str_with_env};
pub use model::*;
pub use schema::json_schema;
pub use size::ByteSize;

/// One configuration problem, with the YAML path it concerns (e.g.
/// `pipelines.views.window.size`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// Dotted YAML path (`sources.events.rate`, `pipelines.p.aggregates[2].fn`).
    pub path: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl std::fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Checks the connector-specific parts of a topology; provided by the binary, which knows the
/// connectors built in.
pub trait ConnectorCatalog {
    /// Problems with source `name`'s options (path prefix `sources.<name>`).
    fn check_source(&self, name: &str, spec: &SourceSpec) -> Vec<ConfigIssue>;
    /// Problems with sink `name`'s options (path prefix `sinks.<name>`).
    fn check_sink(&self, name: &str, spec: &SinkSpec) -> Vec<ConfigIssue>;
    /// Problems with the `fleet` section's backend options (path prefix `fleet`).
    fn check_fleet(&self, _spec: &FleetSpec) -> Vec<ConfigIssue> {
        Vec::new()
    }
    /// Whether pipelines reading a source of type `source_type` may use `repartition: true`
    /// (the source's connector provides an exchange). Default: no.
    fn supports_repartition(&self, _source_type: &str) -> bool {
        false
    }
}
