//! The OpenAI batch input format: one JSON object a line,
//! `{"custom_id", "method": "POST", "url": "/v1/embeddings", "body": {...}}`.

use serde_json::{Map, Value};

use super::{ErrorCode, LineError};

pub const EMBEDDINGS_URL: &str = "/v1/embeddings";
/// URLs that OpenAI's batch API accepts and Barge will serve with a decoder model.
pub const GENERATION_URLS: [&str; 2] = ["/v1/chat/completions", "/v1/completions"];
/// OpenAI's limit on inputs in one embeddings request.
pub const MAX_INPUTS: usize = 2048;
/// custom_id is echoed into every output line; keep it reasonable.
const MAX_CUSTOM_ID_BYTES: usize = 512;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EmbeddingInput {
    Text(String),
    /// Token ids, used as given (including any special tokens the model expects).
    Tokens(Vec<u32>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodingFormat {
    Float,
    Base64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingRequest {
    pub custom_id: String,
    pub inputs: Vec<EmbeddingInput>,
    pub encoding: EncodingFormat,
    pub dimensions: Option<u64>,
}

/// Parses and validates one line. `defaults` fill body fields the line leaves out.
pub fn parse_line(line: &[u8], defaults: &Map<String, Value>) -> Result<EmbeddingRequest, LineError> {
    let value: Value = serde_json::from_slice(line)
        .map_err(|e| LineError::new(ErrorCode::InvalidJson, format!("the line is not valid JSON: {e}")))?;
    let Value::Object(mut obj) = value else {
        return Err(LineError::new(ErrorCode::InvalidJson, "the line is JSON but not an object"));
    };
    let custom_id = custom_id(obj.get("custom_id"))?;
    let known = Some(custom_id.clone());
    request(&mut obj, defaults)
        .map_err(|e| e.with_custom_id(known))
        .map(|(inputs, encoding, dimensions)| EmbeddingRequest { custom_id, inputs, encoding, dimensions })
}

pub(crate) fn custom_id(value: Option<&Value>) -> Result<String, LineError> {
    match value {
        None | Some(Value::Null) => Err(LineError::new(ErrorCode::MissingCustomId, "`custom_id` is missing")),
        Some(Value::String(s)) if s.is_empty() => {
            Err(LineError::new(ErrorCode::MissingCustomId, "`custom_id` is empty"))
        }
        Some(Value::String(s)) if s.len() > MAX_CUSTOM_ID_BYTES => Err(LineError::new(
            ErrorCode::InvalidCustomId,
            format!("`custom_id` is {} bytes long; the limit is {MAX_CUSTOM_ID_BYTES}", s.len()),
        )),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(LineError::new(
            ErrorCode::InvalidCustomId,
            format!("`custom_id` must be a string, not {}", kind(other)),
        )),
    }
}

type Parsed = (Vec<EmbeddingInput>, EncodingFormat, Option<u64>);

/// The batch format's `method`, which must be POST.
pub(crate) fn check_method(obj: &Map<String, Value>) -> Result<(), LineError> {
    match obj.get("method") {
        Some(Value::String(m)) if m.eq_ignore_ascii_case("POST") => Ok(()),
        None => Err(LineError::new(ErrorCode::UnsupportedMethod, "`method` is missing (expected \"POST\")")),
        Some(other) => Err(LineError::new(
            ErrorCode::UnsupportedMethod,
            format!("`method` is {other}; only \"POST\" is supported"),
        )),
    }
}

fn request(obj: &mut Map<String, Value>, defaults: &Map<String, Value>) -> Result<Parsed, LineError> {
    check_method(obj)?;
    match obj.get("url").and_then(Value::as_str) {
        Some(EMBEDDINGS_URL) => {}
        Some(url) if GENERATION_URLS.contains(&url) => {
            return Err(LineError::new(
                ErrorCode::UnsupportedUrl,
                format!("`url` {url} needs a decoder model; this job's model is an embedding encoder"),
            ));
        }
        Some(url) => {
            return Err(LineError::new(
                ErrorCode::UnsupportedUrl,
                format!("`url` {url:?} is not supported (expected {EMBEDDINGS_URL})"),
            ));
        }
        None => return Err(LineError::new(ErrorCode::UnsupportedUrl, "`url` is missing or not a string")),
    }
    let mut body = match obj.remove("body") {
        Some(Value::Object(body)) => body,
        None | Some(Value::Null) => return Err(LineError::new(ErrorCode::MissingBody, "`body` is missing")),
        Some(other) => {
            return Err(LineError::new(
                ErrorCode::MissingBody,
                format!("`body` must be an object, not {}", kind(&other)),
            ));
        }
    };
    for (k, v) in defaults {
        body.entry(k.clone()).or_insert_with(|| v.clone());
    }
    let inputs = inputs(body.remove("input"))?;
    let encoding = match body.get("encoding_format") {
        None | Some(Value::Null) => EncodingFormat::Float,
        Some(Value::String(s)) if s == "float" => EncodingFormat::Float,
        Some(Value::String(s)) if s == "base64" => EncodingFormat::Base64,
        Some(other) => {
            return Err(LineError::new(
                ErrorCode::InvalidEncodingFormat,
                format!("`encoding_format` is {other}; expected \"float\" or \"base64\""),
            ));
        }
    };
    let dimensions = match body.get("dimensions") {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.as_u64().filter(|&d| d > 0).ok_or_else(|| {
            LineError::new(
                ErrorCode::UnsupportedDimensions,
                format!("`dimensions` is {v}; expected a positive integer"),
            )
        })?),
    };
    Ok((inputs, encoding, dimensions))
}

fn inputs(value: Option<Value>) -> Result<Vec<EmbeddingInput>, LineError> {
    let invalid = |msg: String| LineError::new(ErrorCode::InvalidInput, msg);
    let empty = |msg: &str| LineError::new(ErrorCode::MissingInput, msg);
    let items = match value {
        None | Some(Value::Null) => return Err(empty("`body.input` is missing")),
        Some(Value::String(s)) if s.is_empty() => return Err(empty("`body.input` is an empty string")),
        Some(Value::String(s)) => return Ok(vec![EmbeddingInput::Text(s)]),
        Some(Value::Array(items)) if items.is_empty() => return Err(empty("`body.input` is an empty array")),
        Some(Value::Array(items)) => items,
        Some(other) => {
            return Err(invalid(format!(
                "`body.input` must be a string, an array of strings or an array of token arrays, not {}",
                kind(&other)
            )));
        }
    };
    // One array of integers is a single tokenized input, as in the OpenAI API.
    if items.iter().all(Value::is_number) {
        return Ok(vec![EmbeddingInput::Tokens(token_ids(&items, None)?)]);
    }
    if items.len() > MAX_INPUTS {
        return Err(LineError::new(
            ErrorCode::TooManyInputs,
            format!("`body.input` has {} items; the limit is {MAX_INPUTS}", items.len()),
        ));
    }
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| match item {
            Value::String(s) if s.is_empty() => Err(empty(&format!("`body.input[{i}]` is an empty string"))),
            Value::String(s) => Ok(EmbeddingInput::Text(s)),
            Value::Array(ids) if ids.is_empty() => {
                Err(empty(&format!("`body.input[{i}]` is an empty array")))
            }
            Value::Array(ids) => Ok(EmbeddingInput::Tokens(token_ids(&ids, Some(i))?)),
            other => Err(invalid(format!(
                "`body.input[{i}]` must be a string or an array of token ids, not {}",
                kind(&other)
            ))),
        })
        .collect()
}

fn token_ids(items: &[Value], index: Option<usize>) -> Result<Vec<u32>, LineError> {
    let at = index.map_or_else(|| "`body.input`".to_string(), |i| format!("`body.input[{i}]`"));
    items
        .iter()
        .map(|v| {
            v.as_u64().and_then(|id| u32::try_from(id).ok()).ok_or_else(|| {
                LineError::new(ErrorCode::InvalidInput, format!("{at} holds {v}, which is not a token id"))
            })
        })
        .collect()
}

pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<EmbeddingRequest, LineError> {
        parse_line(v.to_string().as_bytes(), &Map::new())
    }

    fn line(input: Value) -> Value {
        json!({"custom_id": "r1", "method": "POST", "url": EMBEDDINGS_URL, "body": {"model": "m", "input": input}})
    }

    #[test]
    fn accepts_every_input_shape_the_openai_api_allows() {
        let text = |s: &str| EmbeddingInput::Text(s.into());
        assert_eq!(parse(line(json!("hi"))).expect("string").inputs, [text("hi")]);
        assert_eq!(parse(line(json!(["a", "b"]))).expect("strings").inputs, [text("a"), text("b")]);
        assert_eq!(
            parse(line(json!([1, 2, 3]))).expect("tokens").inputs,
            [EmbeddingInput::Tokens(vec![1, 2, 3])]
        );
        assert_eq!(
            parse(line(json!([[1], [2, 3]]))).expect("token arrays").inputs,
            [EmbeddingInput::Tokens(vec![1]), EmbeddingInput::Tokens(vec![2, 3])]
        );
    }

    #[test]
    fn reads_encoding_format_and_dimensions() {
        let mut v = line(json!("x"));
        v["body"]["encoding_format"] = json!("base64");
        v["body"]["dimensions"] = json!(128);
        let req = parse(v).expect("valid");
        assert_eq!((req.encoding, req.dimensions), (EncodingFormat::Base64, Some(128)));
    }

    #[test]
    fn defaults_fill_only_what_the_line_leaves_out() {
        let defaults: Map<String, Value> =
            serde_json::from_value(json!({"encoding_format": "base64", "input": "ignored"})).expect("map");
        let req = parse_line(line(json!("mine")).to_string().as_bytes(), &defaults).expect("valid");
        assert_eq!(req.encoding, EncodingFormat::Base64);
        assert_eq!(req.inputs, [EmbeddingInput::Text("mine".into())]);
    }

    #[test]
    fn each_bad_line_gets_the_code_that_names_its_problem() {
        let with = |f: &dyn Fn(&mut Value)| {
            let mut v = line(json!("x"));
            f(&mut v);
            v
        };
        let cases: Vec<(Value, ErrorCode, &str)> = vec![
            (json!([1, 2]), ErrorCode::InvalidJson, "not an object"),
            (with(&|v| v["custom_id"] = json!(null)), ErrorCode::MissingCustomId, "missing"),
            (with(&|v| v["custom_id"] = json!("")), ErrorCode::MissingCustomId, "empty"),
            (with(&|v| v["custom_id"] = json!(7)), ErrorCode::InvalidCustomId, "a number"),
            (with(&|v| v["method"] = json!("GET")), ErrorCode::UnsupportedMethod, "GET"),
            (with(&|v| v["url"] = json!("/v1/chat/completions")), ErrorCode::UnsupportedUrl, "decoder"),
            (with(&|v| v["url"] = json!("/v2/x")), ErrorCode::UnsupportedUrl, "/v2/x"),
            (with(&|v| v["body"] = json!(null)), ErrorCode::MissingBody, "missing"),
            (line(json!("")), ErrorCode::MissingInput, "empty string"),
            (line(json!([])), ErrorCode::MissingInput, "empty array"),
            (line(json!(["a", ""])), ErrorCode::MissingInput, "input[1]"),
            (line(json!({"a": 1})), ErrorCode::InvalidInput, "an object"),
            (line(json!([1, -2])), ErrorCode::InvalidInput, "-2"),
            (line(json!(["a", 3.5])), ErrorCode::InvalidInput, "input[1]"),
            (line(json!(vec!["a"; MAX_INPUTS + 1])), ErrorCode::TooManyInputs, "2049"),
            (with(&|v| v["body"]["encoding_format"] = json!("hex")), ErrorCode::InvalidEncodingFormat, "hex"),
            (with(&|v| v["body"]["dimensions"] = json!(0)), ErrorCode::UnsupportedDimensions, "positive"),
        ];
        for (value, code, needle) in cases {
            let err = parse(value.clone()).expect_err(&value.to_string());
            assert_eq!(err.code, code, "{value}: {}", err.message);
            assert!(err.message.contains(needle), "{value}: {:?} lacks {needle:?}", err.message);
        }
        let err = parse_line(b"{not json", &Map::new()).expect_err("bad json");
        assert_eq!(err.code, ErrorCode::InvalidJson);
    }

    #[test]
    fn errors_after_the_custom_id_keep_it() {
        let err = parse(line(json!(""))).expect_err("empty input");
        assert_eq!(err.custom_id.as_deref(), Some("r1"));
        let err = parse(json!({"method": "POST"})).expect_err("no id");
        assert_eq!(err.custom_id, None);
    }
}
