//! `GET /api/openapi.json`: a valid OpenAPI 3.1 document (checked by PyPI's
//! `openapi-spec-validator`), describing exactly the server API's routes: every route of the
//! real router is in it, every path in it is a route, and each path's methods are the ones the
//! running server answers (any other gets 405).

use serde_json::Value;

use crate::helpers::TestServer;

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

/// Whether the router's path (`/channels/{*rest}`, `/webhooks/{id}`) matches a document path
/// (`/channels/{channel}/history`).
fn route_matches(route: &str, path: &str) -> bool {
    let (mut route_segments, mut path_segments) = (route.split('/'), path.split('/'));
    loop {
        match (route_segments.next(), path_segments.next()) {
            (None, None) => return true,
            (Some(wildcard), Some(_)) if wildcard.starts_with("{*") => return true,
            (Some(parameter), Some(segment)) if parameter.starts_with('{') => {
                if segment.is_empty() {
                    return false;
                }
            }
            (Some(fixed), Some(segment)) if fixed == segment => {}
            _ => return false,
        }
    }
}

/// A document path made concrete: parameters filled in.
fn concrete(path: &str) -> String {
    path.replace("{channel}", "docs:probe").replace("{id}", "no-such-endpoint")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_is_valid_and_describes_exactly_the_routes_the_server_answers() {
    let server = TestServer::start().await;
    let response = server.http().get(server.url("/api/openapi.json")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let document: Value = response.json().await.unwrap();
    assert_eq!(document["openapi"], "3.1.0");

    // Valid, by an implementation nobody here wrote.
    match std::env::var("HERALD_TEST_PYTHON") {
        Err(_) => eprintln!("skipped openapi-spec-validator: HERALD_TEST_PYTHON is unset (scripts/test sets it up)"),
        Ok(python) => {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("openapi.json");
            std::fs::write(&path, serde_json::to_string(&document).unwrap()).unwrap();
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/validate_openapi.py");
            let output = tokio::process::Command::new(python).arg(script).arg(&path).output().await.unwrap();
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(output.status.success(), "openapi-spec-validator refused the document: {stderr}");
            assert!(String::from_utf8_lossy(&output.stdout).contains("3.1"), "{stderr}");
        }
    }

    let paths: Vec<String> = document["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(|path| path.strip_prefix("/api").expect("every path is under /api").to_string())
        .collect();
    let routes: Vec<&str> = herald_server::api::routes().into_iter().map(|(route, _)| route).collect();
    for route in &routes {
        assert!(paths.iter().any(|path| route_matches(route, path)), "route {route} is not in the document");
    }
    for path in &paths {
        assert!(routes.iter().any(|route| route_matches(route, path)), "{path} is in the document, not the router");
    }

    // Each path's methods: documented ones reach a handler, the others get 405.
    for path in &paths {
        let documented: Vec<&str> = METHODS
            .into_iter()
            .filter(|method| document["paths"][format!("/api{path}")].get(method).is_some())
            .collect();
        for method in METHODS {
            let request = server
                .http()
                .request(method.to_uppercase().parse().unwrap(), server.url(&format!("/api{}", concrete(path))))
                .header("content-type", "application/json")
                .body("{}");
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            if documented.contains(&method) {
                assert_ne!(status, 405, "{method} {path} is documented but not served");
                // A handler's own 404 (`webhook_not_found`) is fine; the router's is not.
                assert_ne!(body["error"]["code"], "not_found", "{method} {path} is documented but not routed");
            } else {
                assert_eq!(status, 405, "{method} {path} is served ({status}) but not documented");
            }
        }
    }
}
