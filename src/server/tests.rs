use super::*;

fn doc() -> serde_json::Value {
    serde_json::from_str(OPENAPI).expect("openapi.json is JSON")
}

#[test]
fn the_openapi_document_describes_exactly_the_routes_served() {
    let doc = doc();
    let mut described: Vec<(String, String)> = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in ["get", "post", "put", "delete", "patch"] {
            if item.get(method).is_some() {
                described.push((method.to_owned(), path.clone()));
            }
        }
    }
    described.sort();
    let mut served: Vec<(String, String)> = API_ROUTES
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    served.sort();
    assert_eq!(described, served);
}

#[test]
fn every_schema_reference_resolves_and_objects_require_what_they_declare() {
    let doc = doc();
    let text = OPENAPI;
    let mut rest = text;
    while let Some(i) = rest.find("\"$ref\": \"#/") {
        let tail = &rest[i + 10..];
        let end = tail.find('"').expect("closing quote");
        let pointer = &tail[..end];
        assert!(
            doc.pointer(pointer).is_some(),
            "`#{pointer}` does not resolve"
        );
        rest = &tail[end..];
    }
    for (name, schema) in doc["components"]["schemas"].as_object().expect("schemas") {
        if schema["type"] != "object" {
            continue;
        }
        let props: std::collections::BTreeSet<&str> = schema["properties"]
            .as_object()
            .map(|p| p.keys().map(String::as_str).collect())
            .unwrap_or_default();
        let required: std::collections::BTreeSet<&str> = schema["required"]
            .as_array()
            .map(|r| r.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        assert!(
            required.is_subset(&props),
            "{name} requires undeclared properties"
        );
    }
}

#[test]
fn job_states_in_the_document_are_the_servers() {
    let doc = doc();
    let states: Vec<&str> = doc["components"]["schemas"]["Job"]["properties"]["state"]["enum"]
        .as_array()
        .expect("enum")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    let ours: Vec<&str> = JobState::ALL.iter().map(|s| s.as_str()).collect();
    assert_eq!(states, ours);
}
