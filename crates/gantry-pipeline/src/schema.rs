//! The JSON Schema of pipeline files, generated from the file model, for editors and docs.

use schemars::generate::SchemaSettings;

use crate::model::PipelineFile;

/// The JSON Schema (draft 2020-12) of a pipeline file. `docs/pipeline.schema.json` is this,
/// pretty-printed; editors use it for completion and checks.
pub fn json_schema() -> serde_json::Value {
    let generator = SchemaSettings::draft2020_12().into_generator();
    let mut schema = generator.into_root_schema_for::<PipelineFile>();
    schema.insert(
        "$id".into(),
        "https://gantry.dev/schemas/pipeline.schema.json".into(),
    );
    schema.to_value()
}
