use std::process::ExitCode;

/// `gantry schema`: the pipeline language's JSON Schema, as committed in docs/.
pub fn schema() -> anyhow::Result<ExitCode> {
    let schema = gantry_pipeline::json_schema();
    println!("{}", serde_json::to_string_pretty(&schema)?);
    Ok(ExitCode::SUCCESS)
}
