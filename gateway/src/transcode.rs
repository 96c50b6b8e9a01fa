//! HTTP/JSON for unary RPCs, from their `google.api.http` annotations.
//!
//! Nothing here knows any one RPC: at start the gateway reads the
//! descriptors compiled from `proto/`, and every unary method with an HTTP
//! rule becomes a route. A request becomes the method's input message
//! (path variables, then the JSON body or the query string), goes to the
//! upstream serving the method as an ordinary gRPC call with the configured
//! deadline, and the answer comes back as proto3 JSON. Adding an annotation
//! to a `.proto` adds the route and its OpenAPI entry.

use std::{collections::HashMap, sync::Arc};

use anyhow::{Context as _, bail};
use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, RawQuery, State},
    response::{IntoResponse, Response},
    routing::{MethodFilter, on},
};
use http::uri::PathAndQuery;
use prost::Message as _;
use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, MethodDescriptor,
    ReflectMessage as _, SerializeOptions, Value,
};
use tonic::{
    Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
};

use crate::{
    error::{ApiError, Upstream},
    upstream::Upstreams,
};

/// One HTTP route bound to one RPC.
#[derive(Debug, Clone)]
pub struct Binding {
    pub method: MethodDescriptor,
    pub http_method: http::Method,
    /// The path template as written in the annotation, e.g. `/v1/originals/{sha256}`.
    pub template: String,
    /// Request fields filled from the path, in template order.
    pub path_fields: Vec<String>,
    /// Empty: no body; `*`: the whole request; else the field the body fills.
    pub body: String,
    pub upstream: Upstream,
}

/// Every binding found in the descriptors.
pub fn bindings(descriptor_set: &[u8]) -> anyhow::Result<Vec<Binding>> {
    let pool = DescriptorPool::decode(descriptor_set).context("decoding the compiled descriptors")?;
    let Some(http_option) = pool.get_extension_by_name("google.api.http") else {
        return Ok(Vec::new());
    };
    let mut bindings = Vec::new();
    for service in pool.services() {
        for method in service.methods() {
            let options = method.options();
            if !options.has_extension(&http_option) {
                continue;
            }
            if method.is_client_streaming() || method.is_server_streaming() {
                bail!("{}: HTTP rules are for unary methods only", method.full_name());
            }
            let upstream = Upstream::serving(service.full_name())
                .with_context(|| format!("{}: no upstream serves this service", method.full_name()))?;
            let Value::Message(rule) = options.get_extension(&http_option).into_owned() else {
                bail!("{}: google.api.http is not a message", method.full_name());
            };
            let mut rules = vec![rule.clone()];
            if let Some(Value::List(more)) = rule
                .get_field_by_name("additional_bindings")
                .map(|v| v.into_owned())
            {
                rules.extend(more.into_iter().filter_map(|v| match v {
                    Value::Message(m) => Some(m),
                    _ => None,
                }));
            }
            for rule in rules {
                bindings.push(binding(&method, &rule, upstream)?);
            }
        }
    }
    Ok(bindings)
}

fn binding(method: &MethodDescriptor, rule: &DynamicMessage, upstream: Upstream) -> anyhow::Result<Binding> {
    let text = |name: &str| {
        rule.get_field_by_name(name)
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    };
    let (http_method, template) = ["get", "put", "post", "delete", "patch"]
        .into_iter()
        .find_map(|verb| {
            let path = text(verb);
            (!path.is_empty()).then(|| (verb.to_ascii_uppercase().parse().expect("a valid method"), path))
        })
        .with_context(|| {
            format!(
                "{}: the HTTP rule has no get/put/post/delete/patch path",
                method.full_name()
            )
        })?;
    let path_fields = template_fields(&template)
        .with_context(|| format!("{}: path template {template:?}", method.full_name()))?;
    let input = method.input();
    for field in &path_fields {
        field_path(&input, field)
            .with_context(|| format!("{}: path variable {{{field}}}", method.full_name()))?;
    }
    let body = text("body");
    if !body.is_empty() && body != "*" && input.get_field_by_name(&body).is_none() {
        bail!(
            "{}: body field {body:?} is not in {}",
            method.full_name(),
            input.full_name()
        );
    }
    Ok(Binding {
        method: method.clone(),
        http_method,
        template,
        path_fields,
        body,
        upstream,
    })
}

/// The variables of a template made of literal segments and `{field}`
/// captures (the forms this gateway's router matches).
fn template_fields(template: &str) -> anyhow::Result<Vec<String>> {
    let Some(rest) = template.strip_prefix('/') else {
        bail!("does not start with /");
    };
    let mut fields = Vec::new();
    for segment in rest.split('/') {
        if let Some(variable) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            if variable.is_empty()
                || !variable
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
            {
                bail!("variable {{{variable}}}: only {{field}} captures are supported");
            }
            fields.push(variable.to_owned());
        } else if segment.is_empty() || segment.contains(['{', '}', '*', ':']) {
            bail!("segment {segment:?}: only literal segments and {{field}} captures are supported");
        }
    }
    Ok(fields)
}

/// The field a dotted path names, through nested messages.
fn field_path(message: &MessageDescriptor, path: &str) -> anyhow::Result<Vec<FieldDescriptor>> {
    let mut fields = Vec::new();
    let mut current = message.clone();
    let mut names = path.split('.').peekable();
    while let Some(name) = names.next() {
        let field = current
            .get_field_by_name(name)
            .with_context(|| format!("{} has no field {name:?}", current.full_name()))?;
        if names.peek().is_some() {
            current = match field.kind() {
                Kind::Message(inner) if !field.is_list() && !field.is_map() => inner,
                _ => bail!("{name} is not a message field"),
            };
        }
        fields.push(field);
    }
    Ok(fields)
}

/// Adds a route per binding to `router`.
pub fn routes<S: Clone + Send + Sync + 'static>(bindings: &[Binding], upstreams: &Upstreams) -> Router<S> {
    let mut router = Router::new();
    for binding in bindings {
        let filter = MethodFilter::try_from(binding.http_method.clone()).expect("one of the five methods");
        let state = (Arc::new(binding.clone()), upstreams.clone());
        let handler = on(filter, call).with_state(state);
        router = router.route(&binding.template, handler);
    }
    router
}

type CallState = (Arc<Binding>, Upstreams);

async fn call(
    State((binding, upstreams)): State<CallState>,
    Path(variables): Path<HashMap<String, String>>,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Result<Response, ApiError> {
    let input = binding.method.input();
    let mut message = DynamicMessage::new(input.clone());
    match binding.body.as_str() {
        "" => {}
        "*" => message = from_json(&input, &body)?,
        field => {
            let descriptor = input.get_field_by_name(field).expect("checked at start");
            let Kind::Message(inner) = descriptor.kind() else {
                return Err(ApiError::BadRequest(format!(
                    "body field {field} is not a message"
                )));
            };
            message.set_field(&descriptor, Value::Message(from_json(&inner, &body)?));
        }
    }
    for field in &binding.path_fields {
        let value = variables.get(field).map(String::as_str).unwrap_or_default();
        set_from_text(&mut message, field, value)?;
    }
    if binding.body != "*" {
        for (name, value) in crate::query::pairs(query.as_deref())? {
            if binding.path_fields.contains(&name) {
                return Err(ApiError::BadRequest(format!(
                    "{name} is already given in the path"
                )));
            }
            set_from_text(&mut message, &name, &value)?;
        }
    }

    let channel = upstreams.channel(binding.upstream);
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| ApiError::from_status(binding.upstream)(Status::from_error(e)))?;
    let path: PathAndQuery = format!(
        "/{}/{}",
        binding.method.parent_service().full_name(),
        binding.method.name()
    )
    .parse()
    .expect("service and method names are valid in a path");
    let codec = DynamicCodec {
        output: binding.method.output(),
    };
    let answer = grpc
        .unary(upstreams.request(message), path, codec)
        .await
        .map_err(ApiError::from_status(binding.upstream))?
        .into_inner();
    let json = answer
        .serialize_with_options(serde_json::value::Serializer, &json_options())
        .map_err(|_| ApiError::Protocol {
            upstream: binding.upstream,
            what: "its answer has no JSON form",
        })?;
    Ok(Json(json).into_response())
}

/// JSON as the rest of this API writes it: snake_case names, every field.
pub fn json_options() -> SerializeOptions {
    SerializeOptions::new()
        .use_proto_field_name(true)
        .skip_default_fields(false)
}

fn from_json(descriptor: &MessageDescriptor, body: &[u8]) -> Result<DynamicMessage, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(DynamicMessage::new(descriptor.clone()));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let message = DynamicMessage::deserialize(descriptor.clone(), &mut deserializer)
        .and_then(|message| deserializer.end().map(|()| message))
        .map_err(|e| ApiError::BadRequest(format!("the JSON body is not a {}: {e}", descriptor.name())))?;
    Ok(message)
}

/// Sets a (possibly nested, possibly repeated) scalar field from its text
/// form, as path variables and query parameters carry it.
fn set_from_text(message: &mut DynamicMessage, path: &str, text: &str) -> Result<(), ApiError> {
    let fields = field_path(&message.descriptor(), path)
        .map_err(|e| ApiError::BadRequest(format!("unknown parameter {path}: {e}")))?;
    let (last, parents) = fields.split_last().expect("a path names at least one field");
    let mut target = message;
    for parent in parents {
        target = match target.get_field_mut(parent) {
            Value::Message(inner) => inner,
            _ => unreachable!("field_path only walks through message fields"),
        };
    }
    let value = scalar(last, text).map_err(|why| ApiError::BadRequest(format!("{path} {text:?}: {why}")))?;
    if last.is_list() {
        if let Value::List(items) = target.get_field_mut(last) {
            items.push(value);
        }
    } else {
        target.set_field(last, value);
    }
    Ok(())
}

fn scalar(field: &FieldDescriptor, text: &str) -> Result<Value, String> {
    fn number<T: std::str::FromStr>(text: &str) -> Result<T, String> {
        text.parse()
            .map_err(|_| "not a number of the right kind".to_owned())
    }
    Ok(match field.kind() {
        Kind::String => Value::String(text.to_owned()),
        Kind::Bool => Value::Bool(match text {
            "true" | "1" => true,
            "false" | "0" => false,
            _ => return Err("not true or false".to_owned()),
        }),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => Value::I32(number(text)?),
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => Value::I64(number(text)?),
        Kind::Uint32 | Kind::Fixed32 => Value::U32(number(text)?),
        Kind::Uint64 | Kind::Fixed64 => Value::U64(number(text)?),
        Kind::Float => Value::F32(number(text)?),
        Kind::Double => Value::F64(number(text)?),
        Kind::Enum(descriptor) => Value::EnumNumber(
            descriptor
                .get_value_by_name(text)
                .map(|v| v.number())
                .or_else(|| text.parse().ok().filter(|n| descriptor.get_value(*n).is_some()))
                .ok_or_else(|| {
                    let names: Vec<_> = descriptor.values().map(|v| v.name().to_owned()).collect();
                    format!("not one of {}", names.join(", "))
                })?,
        ),
        Kind::Bytes => return Err("bytes go in a JSON body".to_owned()),
        Kind::Message(_) => return Err("messages go in a JSON body".to_owned()),
    })
}

/// Encodes and decodes messages known only from their descriptors.
struct DynamicCodec {
    output: MessageDescriptor,
}

struct DynamicEncoder;
struct DynamicDecoder(MessageDescriptor);

impl Codec for DynamicCodec {
    type Encode = DynamicMessage;
    type Decode = DynamicMessage;
    type Encoder = DynamicEncoder;
    type Decoder = DynamicDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        DynamicEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        DynamicDecoder(self.output.clone())
    }
}

impl Encoder for DynamicEncoder {
    type Item = DynamicMessage;
    type Error = Status;

    fn encode(&mut self, item: DynamicMessage, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(dst)
            .map_err(|e| Status::internal(format!("encoding the request: {e}")))
    }
}

impl Decoder for DynamicDecoder {
    type Item = DynamicMessage;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<DynamicMessage>, Status> {
        DynamicMessage::decode(self.0.clone(), src)
            .map(Some)
            .map_err(|e| Status::internal(format!("decoding the answer: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_annotated_rpcs_become_routes() {
        let bindings = bindings(nws_watermark::pb::FILE_DESCRIPTOR_SET).unwrap();
        let routes: Vec<_> = bindings
            .iter()
            .map(|b| (b.http_method.as_str(), b.template.as_str(), b.method.name()))
            .collect();
        assert!(
            routes.contains(&("GET", "/v1/originals/{sha256}", "Stat")),
            "{routes:?}"
        );
        assert!(
            routes.contains(&("GET", "/v1/objects/{sha256}", "Stat")),
            "{routes:?}"
        );
        assert!(routes.contains(&("POST", "/v1/probe", "Probe")), "{routes:?}");
    }

    #[test]
    fn templates_outside_the_supported_forms_are_refused() {
        assert_eq!(template_fields("/v1/a/{x}/b/{y.z}").unwrap(), ["x", "y.z"]);
        for bad in ["v1/a", "/v1/{x=**}", "/v1/*", "/v1/a:verb", "/v1//a", "/v1/{}"] {
            assert!(template_fields(bad).is_err(), "{bad}");
        }
    }
}
