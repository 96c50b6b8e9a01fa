//! `GET /openapi.json`: the whole HTTP API. The routes transcoded from
//! `google.api.http` are described from the same descriptors that route
//! them, so the document cannot drift from what is served; the image
//! routes, which stream bytes rather than JSON, are described here.

use std::collections::{BTreeMap, HashMap};

use nws_watermark::params::{self, PARAMS};
use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{Value, json};

use crate::transcode::Binding;

pub fn document(bindings: &[Binding]) -> Value {
    let mut paths = hand_written_paths();
    let mut schemas = BTreeMap::new();
    schemas.insert("Error".to_owned(), error_schema());
    // Operation ids as grpc-gateway writes them (`Storage_Stat`, then
    // `Storage_Stat2` for an additional binding): unique, and valid
    // identifiers for client generators.
    let mut bindings_seen: HashMap<String, usize> = HashMap::new();
    for binding in bindings {
        let method = &binding.method;
        let base = format!("{}_{}", method.parent_service().name(), method.name());
        let seen = bindings_seen.entry(base.clone()).or_default();
        *seen += 1;
        let operation_id = match *seen {
            1 => base,
            n => format!("{base}{n}"),
        };
        let input = binding.method.input();
        let output = binding.method.output();
        collect_schemas(&output, &mut schemas);
        let mut parameters: Vec<Value> = binding
            .path_fields
            .iter()
            .map(|name| json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } }))
            .collect();
        if binding.body != "*" {
            for field in input.fields() {
                let name = field.name().to_owned();
                if binding.path_fields.contains(&name)
                    || name == binding.body
                    || matches!(field.kind(), Kind::Message(_))
                {
                    continue;
                }
                parameters.push(
                    json!({ "name": name, "in": "query", "required": false, "schema": field_schema(&field) }),
                );
            }
        }
        let mut operation = json!({
            "operationId": operation_id,
            "summary": format!("{} (gRPC {}, transcoded)", binding.method.name(), binding.method.full_name()),
            "parameters": parameters,
            "responses": {
                "200": { "description": output.name(), "content": { "application/json": { "schema": reference(&output) } } },
                "default": error_response(),
            },
        });
        let body_message = match binding.body.as_str() {
            "" => None,
            "*" => Some(input.clone()),
            field => input.get_field_by_name(field).and_then(|f| match f.kind() {
                Kind::Message(m) => Some(m),
                _ => None,
            }),
        };
        if let Some(message) = body_message {
            collect_schemas(&message, &mut schemas);
            operation["requestBody"] = json!({ "required": true, "content": { "application/json": { "schema": reference(&message) } } });
        }
        paths
            .entry(binding.template.clone())
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .expect("path items are objects")
            .insert(binding.http_method.as_str().to_ascii_lowercase(), operation);
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "NWS Watermark",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Upload a photo, get it back resized to fit 1920×1080 with a text watermark whose colour adapts to the background. Errors are JSON {code, message} with gRPC code names.",
        },
        "paths": paths,
        "components": { "schemas": schemas },
    })
}

fn reference(message: &MessageDescriptor) -> Value {
    json!({ "$ref": format!("#/components/schemas/{}", message.full_name()) })
}

fn collect_schemas(message: &MessageDescriptor, schemas: &mut BTreeMap<String, Value>) {
    if schemas.contains_key(message.full_name()) {
        return;
    }
    // Inserted before the fields are walked, so recursive types end.
    schemas.insert(message.full_name().to_owned(), Value::Null);
    let mut properties = serde_json::Map::new();
    for field in message.fields() {
        if let Kind::Message(inner) = field.kind() {
            collect_schemas(&inner, schemas);
        }
        properties.insert(field.name().to_owned(), field_schema(&field));
    }
    schemas.insert(
        message.full_name().to_owned(),
        json!({ "type": "object", "properties": properties }),
    );
}

/// A field's schema as proto3 JSON writes it (64-bit integers as strings,
/// bytes as base64, enums by name, timestamps as RFC 3339).
fn field_schema(field: &FieldDescriptor) -> Value {
    let single = match field.kind() {
        Kind::Double | Kind::Float => json!({ "type": "number" }),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => json!({ "type": "integer", "format": "int32" }),
        Kind::Uint32 | Kind::Fixed32 => json!({ "type": "integer", "format": "int64", "minimum": 0 }),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => json!({ "type": "string", "format": "int64" }),
        Kind::Uint64 | Kind::Fixed64 => json!({ "type": "string", "format": "uint64" }),
        Kind::Bool => json!({ "type": "boolean" }),
        Kind::String => json!({ "type": "string" }),
        Kind::Bytes => json!({ "type": "string", "contentEncoding": "base64" }),
        Kind::Enum(e) => {
            json!({ "type": "string", "enum": e.values().map(|v| v.name().to_owned()).collect::<Vec<_>>() })
        }
        Kind::Message(m) if m.full_name() == "google.protobuf.Timestamp" => {
            json!({ "type": "string", "format": "date-time" })
        }
        Kind::Message(m) => reference(&m),
    };
    if field.is_list() {
        json!({ "type": "array", "items": single })
    } else {
        single
    }
}

fn error_schema() -> Value {
    json!({
        "type": "object",
        "required": ["code", "message"],
        "properties": {
            "code": { "type": "string", "description": "gRPC code name, e.g. INVALID_ARGUMENT" },
            "message": { "type": "string", "description": "what went wrong, naming the field or limit" },
        },
    })
}

fn error_response() -> Value {
    json!({ "description": "an error", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } })
}

fn hand_written_paths() -> BTreeMap<String, Value> {
    let options: Vec<Value> = PARAMS
        .iter()
        .map(|param| json!({ "name": param.name, "in": "query", "required": false, "description": param.description, "schema": param_schema(param.kind) }))
        .collect();
    let image_headers = json!({
        "X-Cache": { "description": "HIT-L1, HIT-L2, HIT-STORE, MISS or COALESCED", "schema": { "type": "string" } },
        "ETag": { "description": "the result key, quoted", "schema": { "type": "string" } },
        "Server-Timing": { "description": "one entry per step", "schema": { "type": "string" } },
        "Content-Location": { "description": "/v1/images/{key}", "schema": { "type": "string" } },
    });
    let image = json!({ "image/*": { "schema": { "type": "string", "format": "binary" } } });
    let upload = json!({
        "operationId": "Watermark",
        "summary": "Watermark an image",
        "description": "The image as multipart/form-data (file field `image`, options as fields in any order or in the query) or as the raw body with options in the query. Unknown option names are refused with 400. The original is stored by its SHA-256; the result is cached under its key.",
        "parameters": options,
        "requestBody": { "required": true, "content": {
            "multipart/form-data": { "schema": { "type": "object", "required": ["image"], "properties": { "image": { "type": "string", "format": "binary" } } } },
            "image/*": { "schema": { "type": "string", "format": "binary" } },
        } },
        "responses": {
            "200": { "description": "the watermarked image", "headers": image_headers, "content": image },
            "400": error_response(), "408": error_response(), "413": error_response(), "415": error_response(),
            "429": error_response(), "503": error_response(), "default": error_response(),
        },
    });
    let hash = |name: &str| json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string", "pattern": "^[0-9a-f]{64}$" } });
    let health = json!({ "200": { "description": "status", "content": { "application/json": { "schema": { "type": "object" } } } }, "503": { "description": "not ready" } });
    BTreeMap::from([
        ("/v1/watermark".to_owned(), json!({ "post": upload })),
        (
            "/upload".to_owned(),
            json!({ "post": { "operationId": "Upload", "summary": "The Go original's name for POST /v1/watermark", "responses": { "200": { "description": "as /v1/watermark" } } } }),
        ),
        (
            "/v1/images/{key}".to_owned(),
            json!({ "get": {
            "operationId": "GetResult",
            "summary": "A result by its key (immutable; If-None-Match gives 304)",
            "parameters": [hash("key")],
            "responses": { "200": { "description": "the image", "headers": image_headers, "content": image }, "304": { "description": "not modified" }, "404": error_response(), "default": error_response() },
        } }),
        ),
        (
            "/image/{sha256}".to_owned(),
            json!({ "get": {
            "operationId": "GetOriginal",
            "summary": "A stored original",
            "parameters": [hash("sha256")],
            "responses": { "200": { "description": "the original", "content": image }, "404": error_response() },
        } }),
        ),
        (
            "/status/{sha256}".to_owned(),
            json!({ "get": {
            "operationId": "GetStatus",
            "summary": "A stored original's description (the Go original's route)",
            "parameters": [hash("sha256")],
            "responses": { "200": { "description": "sha256, size, media_type, created, url" }, "404": error_response() },
        } }),
        ),
        (
            "/healthz".to_owned(),
            json!({ "get": { "operationId": "Live", "summary": "Liveness", "responses": health } }),
        ),
        (
            "/readyz".to_owned(),
            json!({ "get": { "operationId": "Ready", "summary": "Readiness: upstreams serving; Redis down means degraded, still ready", "responses": health } }),
        ),
        (
            "/ui/config.json".to_owned(),
            json!({ "get": { "operationId": "UiConfig", "summary": "What the web page needs to know: max_upload_bytes, auth, signed_links, queue, trace_viewer, and options (each upload option's schema, as in this document's parameters)", "responses": { "200": { "description": "the settings", "content": { "application/json": { "schema": { "type": "object", "required": ["max_upload_bytes", "auth", "signed_links", "queue", "trace_viewer", "options"] } } } } } } }),
        ),
        (
            "/openapi.json".to_owned(),
            json!({ "get": { "operationId": "OpenApi", "summary": "This document", "responses": { "200": { "description": "OpenAPI 3.1" } } } }),
        ),
    ])
}

/// A number as written in the source (0.85), not as the f32 widens.
fn as_written(value: f32) -> f64 {
    (f64::from(value) * 1000.0).round() / 1000.0
}

/// The schema of an upload option, with its default and range from the
/// same table the parser uses.
pub fn param_schema(kind: params::Kind) -> Value {
    match kind {
        params::Kind::Text { max_chars, default } => {
            json!({ "type": "string", "maxLength": max_chars, "default": default })
        }
        params::Kind::Choice { values, default } => {
            json!({ "type": "string", "enum": values, "default": default })
        }
        params::Kind::Integer { min, max, default } => {
            json!({ "type": "integer", "minimum": min, "maximum": max, "default": default })
        }
        params::Kind::Fraction { default, max } => {
            json!({ "type": "number", "exclusiveMinimum": 0, "maximum": as_written(max), "default": as_written(default) })
        }
        params::Kind::Number { min, max, default } => {
            json!({ "type": "number", "minimum": as_written(min), "maximum": as_written(max), "default": as_written(default) })
        }
        params::Kind::Pattern { pattern } => json!({ "type": "string", "pattern": pattern }),
        params::Kind::Flag => json!({ "type": "boolean", "default": false }),
    }
}
