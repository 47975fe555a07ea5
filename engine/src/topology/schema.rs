//! The JSON Schema of `topology.yaml`, generated from the model types.

use super::Topology;

/// The JSON Schema of `topology.yaml` (draft 2020-12), generated from [`Topology`]; the doc
/// comments of the model become its descriptions. Committed as `schemas/topology.schema.json`.
pub fn json_schema() -> serde_json::Value {
    let schema = schemars::schema_for!(Topology);
    serde_json::to_value(&schema).unwrap_or(serde_json::Value::Null)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    /// The committed file's expected text: pretty JSON and a trailing newline.
    fn rendered() -> String {
        let mut text = serde_json::to_string_pretty(&json_schema()).unwrap();
        text.push('\n');
        text
    }

    fn schema_file() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("schemas")
            .join("topology.schema.json")
    }

    #[test]
    fn schema_file_is_up_to_date() {
        let path = schema_file();
        let expected = rendered();
        if std::env::var_os("WEIR_UPDATE_SCHEMAS").is_some_and(|v| v == "1") {
            std::fs::write(&path, &expected).expect("write schemas/topology.schema.json");
            return;
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        // Compared as JSON values: key order depends on whether another crate of the build
        // turns on serde_json's `preserve_order`, which does not change the schema.
        let parse = |text: &str| serde_json::from_str::<serde_json::Value>(text).ok();
        assert!(
            parse(&committed).is_some() && parse(&committed) == parse(&expected),
            "{} is stale or missing: the topology model changed. Regenerate it with \
             `WEIR_UPDATE_SCHEMAS=1 cargo test -p weir-engine schema` and commit the result.",
            path.display()
        );
    }

    #[test]
    fn schema_describes_the_top_level_sections() {
        let schema = json_schema();
        let props = schema["properties"].as_object().expect("properties");
        for key in [
            "name",
            "sources",
            "pipelines",
            "sinks",
            "state",
            "checkpoint",
            "parallelism",
        ] {
            assert!(props.contains_key(key), "{key}");
        }
        assert!(schema["$defs"]["WindowSpec"].is_object());
        assert!(schema["$defs"]["Duration"]["pattern"].is_string());
    }
}
