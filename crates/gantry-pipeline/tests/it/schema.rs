//! The committed JSON Schema is the generated one, and the example pipelines satisfy it.

use std::path::{Path, PathBuf};

fn committed_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/pipeline.schema.json")
}

fn generated() -> String {
    let mut text = serde_json::to_string_pretty(&gantry_pipeline::json_schema()).unwrap();
    text.push('\n');
    text
}

#[test]
fn the_committed_schema_is_up_to_date() {
    let path = committed_path();
    let fresh = generated();
    if std::env::var_os("GANTRY_BLESS").is_some() {
        std::fs::write(&path, &fresh).expect("write docs/pipeline.schema.json");
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == fresh,
        "docs/pipeline.schema.json is stale. Regenerate it with\n    cargo run -p gantry -- schema > docs/pipeline.schema.json\n(or GANTRY_BLESS=1 cargo test -p gantry-pipeline --test it schema)"
    );
}

#[test]
fn the_schema_names_itself_and_describes_keys() {
    let schema = gantry_pipeline::json_schema();
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    assert_eq!(schema["title"], "Gantry pipeline");
    let jobs = &schema["properties"]["jobs"];
    assert!(jobs["description"].as_str().unwrap().contains("needs"));
    let job = &schema["$defs"]["Job"]["properties"];
    assert!(
        job["timeout"]["description"]
            .as_str()
            .unwrap()
            .contains("1h30m")
    );
}

fn validator() -> jsonschema::Validator {
    let text = std::fs::read_to_string(committed_path()).expect("docs/pipeline.schema.json");
    let schema: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    jsonschema::validator_for(&schema).expect("a valid JSON Schema")
}

fn yaml_to_json(source: &str) -> serde_json::Value {
    serde_saphyr::from_str(source).unwrap_or_else(|e| panic!("YAML: {e}"))
}

#[test]
fn every_example_pipeline_satisfies_the_schema() {
    let validator = validator();
    for file in crate::examples::example_files() {
        let value = yaml_to_json(&std::fs::read_to_string(&file).unwrap());
        let errors: Vec<String> = validator
            .iter_errors(&value)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{}: {errors:#?}", file.display());
    }
}

#[test]
fn the_schema_rejects_what_the_parser_rejects() {
    let validator = validator();
    for bad in [
        "jobs: { a: { imgae: x, steps: [ { run: x } ] } }",
        "jobs: { a: { steps: [ { run: x, trivy: { image: y } } ] } }",
        "jobs: { a: { steps: [ { name: nothing } ] } }",
        "jobs: { a: { when: { event: pushh }, steps: [ { run: x } ] } }",
        "jobs: { a: { retry: often, steps: [ { run: x } ] } }",
    ] {
        assert!(!validator.is_valid(&yaml_to_json(bad)), "{bad}");
        assert!(gantry_pipeline::parse("t.yaml", bad).is_err(), "{bad}");
    }
}
