//! Generation requests in both batch formats Barge reads:
//! OpenAI's (`{"custom_id", "method", "url": "/v1/chat/completions" | "/v1/completions",
//! "body"}`) and Anthropic's Message Batches (`{"custom_id", "params": {...}}`). Both become one
//! [`GenerationRequest`]; job-wide defaults fill what a line leaves out.

use serde_json::{Map, Value};

use super::openai::{GENERATION_URLS, check_method, custom_id, kind};
use super::{ErrorCode, LineError};
use crate::types::{ChatMessage, Endpoint, Format};

pub const CHAT_URL: &str = "/v1/chat/completions";
pub const COMPLETIONS_URL: &str = "/v1/completions";
/// OpenAI's limit on stop strings.
const MAX_STOP: usize = 4;
/// Anthropic sets no small limit; this keeps stop matching cheap.
const MAX_STOP_SEQUENCES: usize = 16;

#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    Chat {
        messages: Vec<ChatMessage>,
        /// Anthropic's prefill: a final assistant message the reply continues.
        prefill: Option<String>,
    },
    Text(String),
    Tokens(Vec<u32>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct GenerationRequest {
    pub custom_id: String,
    pub endpoint: Endpoint,
    pub prompt: Prompt,
    pub max_tokens: Option<u64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<u64>,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    pub presence_penalty: f64,
    pub frequency_penalty: f64,
}

/// Which format a line is in, by its shape alone; `None` for lines that are neither.
pub fn sniff(line: &[u8]) -> Option<Format> {
    let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(line) else {
        return None;
    };
    if obj.contains_key("params") {
        Some(Format::Anthropic)
    } else if obj.contains_key("body") || obj.contains_key("url") {
        Some(Format::OpenAi)
    } else {
        None
    }
}

/// Parses one line of a job in `format`.
pub fn parse_line(
    line: &[u8],
    format: Format,
    defaults: &Map<String, Value>,
) -> Result<GenerationRequest, LineError> {
    let value: Value = serde_json::from_slice(line)
        .map_err(|e| LineError::new(ErrorCode::InvalidJson, format!("the line is not valid JSON: {e}")))?;
    let Value::Object(mut obj) = value else {
        return Err(LineError::new(ErrorCode::InvalidJson, "the line is JSON but not an object"));
    };
    let id = custom_id(obj.get("custom_id"))?;
    let known = Some(id.clone());
    let parsed = match format {
        Format::OpenAi => openai(&mut obj, defaults, id),
        Format::Anthropic => anthropic(&mut obj, defaults, id),
    };
    parsed.map_err(|e| e.with_custom_id(known))
}

fn invalid(msg: impl Into<String>) -> LineError {
    LineError::new(ErrorCode::InvalidParameter, msg)
}

fn object(value: Option<Value>, what: &str, format: Format) -> Result<Map<String, Value>, LineError> {
    match value {
        Some(Value::Object(m)) => Ok(m),
        None | Some(Value::Null) => {
            let other = match format {
                Format::OpenAi => "; this job reads OpenAI lines (`method`, `url`, `body`)",
                Format::Anthropic => "; this job reads Anthropic lines (`custom_id`, `params`)",
            };
            Err(LineError::new(ErrorCode::MissingBody, format!("`{what}` is missing{other}")))
        }
        Some(other) => Err(LineError::new(
            ErrorCode::MissingBody,
            format!("`{what}` must be an object, not {}", kind(&other)),
        )),
    }
}

fn openai(
    obj: &mut Map<String, Value>,
    defaults: &Map<String, Value>,
    custom_id: String,
) -> Result<GenerationRequest, LineError> {
    if obj.contains_key("params") && !obj.contains_key("body") {
        return Err(LineError::new(
            ErrorCode::WrongFormat,
            "the line is in the Anthropic format (`params`), but this job reads OpenAI lines",
        ));
    }
    check_method(obj)?;
    let endpoint = match obj.get("url").and_then(Value::as_str) {
        Some(CHAT_URL) => Endpoint::ChatCompletions,
        Some(COMPLETIONS_URL) => Endpoint::Completions,
        Some(url) => {
            return Err(LineError::new(
                ErrorCode::UnsupportedUrl,
                format!(
                    "`url` {url:?} is not supported by a decoder model (expected one of {})",
                    GENERATION_URLS.join(", ")
                ),
            ));
        }
        None => return Err(LineError::new(ErrorCode::UnsupportedUrl, "`url` is missing or not a string")),
    };
    let mut body = object(obj.remove("body"), "body", Format::OpenAi)?;
    for (k, v) in defaults {
        body.entry(k.clone()).or_insert_with(|| v.clone());
    }
    let get = |k: &str| body.get(k).filter(|v| !v.is_null());
    if let Some(n) = get("n")
        && n.as_u64() != Some(1)
    {
        return Err(LineError::new(
            ErrorCode::UnsupportedParameter,
            format!("`n` is {n}; only 1 completion per request is supported"),
        ));
    }
    for unsupported in [
        "tools",
        "functions",
        "logprobs",
        "top_logprobs",
        "logit_bias",
        "response_format",
        "stream",
        "echo",
        "best_of",
        "suffix",
    ] {
        if let Some(v) = get(unsupported)
            && !matches!(v, Value::Bool(false))
        {
            return Err(LineError::new(
                ErrorCode::UnsupportedParameter,
                format!("`{unsupported}` is not supported"),
            ));
        }
    }
    let prompt = match endpoint {
        Endpoint::ChatCompletions => {
            Prompt::Chat { messages: openai_messages(get("messages"))?, prefill: None }
        }
        _ => completion_prompt(get("prompt"))?,
    };
    let max_tokens = match get("max_completion_tokens") {
        Some(v) => Some(v),
        None => get("max_tokens"),
    };
    let stop = match get("stop") {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => strings(items, "stop")?,
        Some(other) => {
            return Err(invalid(format!(
                "`stop` must be a string or an array of strings, not {}",
                kind(other)
            )));
        }
    };
    if stop.len() > MAX_STOP {
        return Err(invalid(format!("`stop` has {} strings; the limit is {MAX_STOP}", stop.len())));
    }
    Ok(GenerationRequest {
        custom_id,
        endpoint,
        prompt,
        max_tokens: max_tokens.map(|v| positive(v, "max_tokens")).transpose()?,
        temperature: number(get("temperature"), "temperature", 0.0, 2.0)?,
        top_p: number(get("top_p"), "top_p", 0.0, 1.0)?,
        top_k: get("top_k").map(|v| count(v, "top_k")).transpose()?,
        seed: get("seed").map(seed).transpose()?,
        stop,
        presence_penalty: number(get("presence_penalty"), "presence_penalty", -2.0, 2.0)?.unwrap_or(0.0),
        frequency_penalty: number(get("frequency_penalty"), "frequency_penalty", -2.0, 2.0)?.unwrap_or(0.0),
    })
}

fn anthropic(
    obj: &mut Map<String, Value>,
    defaults: &Map<String, Value>,
    custom_id: String,
) -> Result<GenerationRequest, LineError> {
    if obj.contains_key("body") && !obj.contains_key("params") {
        return Err(LineError::new(
            ErrorCode::WrongFormat,
            "the line is in the OpenAI format (`body`), but this job reads Anthropic lines",
        ));
    }
    let mut params = object(obj.remove("params"), "params", Format::Anthropic)?;
    for (k, v) in defaults {
        params.entry(k.clone()).or_insert_with(|| v.clone());
    }
    let get = |k: &str| params.get(k).filter(|v| !v.is_null());
    let max_tokens = get("max_tokens").ok_or_else(|| invalid("`params.max_tokens` is required"))?;
    let system = match get("system") {
        None => None,
        Some(v) => Some(text_blocks(v, "system")?),
    };
    let mut messages = Vec::new();
    if let Some(s) = system {
        messages.push(ChatMessage { role: "system".into(), content: s });
    }
    let list = match get("messages") {
        Some(Value::Array(list)) if !list.is_empty() => list,
        Some(Value::Array(_)) => {
            return Err(LineError::new(ErrorCode::MissingInput, "`params.messages` is empty"));
        }
        None => return Err(LineError::new(ErrorCode::MissingInput, "`params.messages` is missing")),
        Some(other) => {
            return Err(invalid(format!("`params.messages` must be an array, not {}", kind(other))));
        }
    };
    for (i, m) in list.iter().enumerate() {
        let role = m["role"].as_str().unwrap_or_default();
        if role != "user" && role != "assistant" {
            return Err(invalid(format!(
                "`params.messages[{i}].role` must be \"user\" or \"assistant\", not {}",
                m["role"]
            )));
        }
        let content = text_blocks(&m["content"], &format!("messages[{i}].content"))?;
        messages.push(ChatMessage { role: role.into(), content });
    }
    let prefill = match messages.last() {
        Some(last) if last.role == "assistant" => messages.pop().map(|m| m.content),
        _ => None,
    };
    let stop = match get("stop_sequences") {
        None => Vec::new(),
        Some(Value::Array(items)) => strings(items, "stop_sequences")?,
        Some(other) => {
            return Err(invalid(format!(
                "`stop_sequences` must be an array of strings, not {}",
                kind(other)
            )));
        }
    };
    if stop.len() > MAX_STOP_SEQUENCES {
        return Err(invalid(format!(
            "`stop_sequences` has {} strings; the limit is {MAX_STOP_SEQUENCES}",
            stop.len()
        )));
    }
    Ok(GenerationRequest {
        custom_id,
        endpoint: Endpoint::Messages,
        prompt: Prompt::Chat { messages, prefill },
        max_tokens: Some(positive(max_tokens, "max_tokens")?),
        temperature: number(get("temperature"), "temperature", 0.0, 1.0)?,
        top_p: number(get("top_p"), "top_p", 0.0, 1.0)?,
        top_k: get("top_k").map(|v| count(v, "top_k")).transpose()?,
        seed: None,
        stop,
        presence_penalty: 0.0,
        frequency_penalty: 0.0,
    })
}

fn openai_messages(value: Option<&Value>) -> Result<Vec<ChatMessage>, LineError> {
    let list = match value {
        Some(Value::Array(list)) if !list.is_empty() => list,
        Some(Value::Array(_)) => {
            return Err(LineError::new(ErrorCode::MissingInput, "`body.messages` is empty"));
        }
        None => return Err(LineError::new(ErrorCode::MissingInput, "`body.messages` is missing")),
        Some(other) => return Err(invalid(format!("`body.messages` must be an array, not {}", kind(other)))),
    };
    list.iter()
        .enumerate()
        .map(|(i, m)| {
            let role = match m["role"].as_str() {
                Some("developer") => "system",
                Some(r @ ("system" | "user" | "assistant" | "tool")) => r,
                _ => {
                    return Err(invalid(format!(
                        "`body.messages[{i}].role` must be system, developer, user, assistant or tool, not {}",
                        m["role"]
                    )));
                }
            };
            let content = match &m["content"] {
                Value::Null if role == "assistant" => String::new(),
                v => text_blocks(v, &format!("messages[{i}].content"))?,
            };
            Ok(ChatMessage { role: role.into(), content })
        })
        .collect()
}

/// A string, or an array of text parts (`{"type": "text", "text": ...}`) joined.
fn text_blocks(value: &Value, what: &str) -> Result<String, LineError> {
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => {
            let mut out = String::new();
            for (j, p) in parts.iter().enumerate() {
                match (p["type"].as_str(), p["text"].as_str()) {
                    (Some("text"), Some(t)) => out.push_str(t),
                    (Some(other), _) => {
                        return Err(LineError::new(
                            ErrorCode::UnsupportedParameter,
                            format!("`{what}[{j}]` is a {other:?} part; only text is supported"),
                        ));
                    }
                    _ => return Err(invalid(format!("`{what}[{j}]` is not a text part"))),
                }
            }
            Ok(out)
        }
        other => {
            Err(invalid(format!("`{what}` must be a string or an array of text parts, not {}", kind(other))))
        }
    }
}

fn completion_prompt(value: Option<&Value>) -> Result<Prompt, LineError> {
    match value {
        None => Err(LineError::new(ErrorCode::MissingInput, "`body.prompt` is missing")),
        Some(Value::String(s)) => Ok(Prompt::Text(s.clone())),
        Some(Value::Array(items)) if items.iter().all(Value::is_number) && !items.is_empty() => items
            .iter()
            .map(|v| {
                v.as_u64()
                    .and_then(|id| u32::try_from(id).ok())
                    .ok_or_else(|| invalid(format!("`body.prompt` holds {v}, which is not a token id")))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Prompt::Tokens),
        Some(Value::Array(items)) if items.len() == 1 => completion_prompt(items.first()),
        Some(Value::Array(items)) => Err(LineError::new(
            ErrorCode::UnsupportedParameter,
            format!("`body.prompt` holds {} prompts; send one prompt per line", items.len()),
        )),
        Some(other) => {
            Err(invalid(format!("`body.prompt` must be a string or token ids, not {}", kind(other))))
        }
    }
}

fn strings(items: &[Value], what: &str) -> Result<Vec<String>, LineError> {
    items
        .iter()
        .map(|v| match v {
            Value::String(s) if !s.is_empty() => Ok(s.clone()),
            _ => Err(invalid(format!("`{what}` holds {v}; expected non-empty strings"))),
        })
        .collect()
}

fn number(value: Option<&Value>, what: &str, min: f64, max: f64) -> Result<Option<f64>, LineError> {
    match value {
        None => Ok(None),
        Some(v) => match v.as_f64() {
            Some(x) if (min..=max).contains(&x) => Ok(Some(x)),
            _ => Err(invalid(format!("`{what}` is {v}; expected a number from {min} to {max}"))),
        },
    }
}

fn positive(v: &Value, what: &str) -> Result<u64, LineError> {
    v.as_u64()
        .filter(|&n| n > 0)
        .ok_or_else(|| invalid(format!("`{what}` is {v}; expected a positive integer")))
}

fn count(v: &Value, what: &str) -> Result<u64, LineError> {
    v.as_u64().ok_or_else(|| invalid(format!("`{what}` is {v}; expected a non-negative integer")))
}

fn seed(v: &Value) -> Result<u64, LineError> {
    // OpenAI seeds are signed 64-bit; the bits are what matters.
    v.as_u64()
        .or_else(|| v.as_i64().map(|x| x as u64))
        .ok_or_else(|| invalid(format!("`seed` is {v}; expected an integer")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn chat(body: Value) -> Value {
        json!({"custom_id": "c1", "method": "POST", "url": CHAT_URL, "body": body})
    }

    fn parse(v: &Value, format: Format) -> Result<GenerationRequest, LineError> {
        parse_line(v.to_string().as_bytes(), format, &Map::new())
    }

    #[test]
    fn reads_an_openai_chat_request_with_every_parameter() {
        let v = chat(json!({"model": "m", "messages": [{"role": "developer", "content": "Be brief"},
            {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]}],
            "max_completion_tokens": 9, "max_tokens": 100, "temperature": 0.5, "top_p": 0.9, "top_k": 40,
            "seed": -1, "stop": "END", "presence_penalty": 0.5, "n": 1}));
        let r = parse(&v, Format::OpenAi).expect("valid");
        assert_eq!(r.endpoint, Endpoint::ChatCompletions);
        assert_eq!(
            r.prompt,
            Prompt::Chat {
                messages: vec![
                    ChatMessage { role: "system".into(), content: "Be brief".into() },
                    ChatMessage { role: "user".into(), content: "Hi there".into() }
                ],
                prefill: None
            }
        );
        assert_eq!(
            (r.max_tokens, r.temperature, r.top_p, r.top_k),
            (Some(9), Some(0.5), Some(0.9), Some(40))
        );
        assert_eq!(
            (r.seed, r.stop.clone(), r.presence_penalty),
            (Some(u64::MAX), vec!["END".to_string()], 0.5)
        );
    }

    #[test]
    fn reads_completions_prompts_as_text_or_tokens() {
        let line = |p: Value| json!({"custom_id": "p", "method": "POST", "url": COMPLETIONS_URL, "body": {"prompt": p}});
        assert_eq!(
            parse(&line(json!("Once")), Format::OpenAi).expect("text").prompt,
            Prompt::Text("Once".into())
        );
        assert_eq!(
            parse(&line(json!([5, 6])), Format::OpenAi).expect("ids").prompt,
            Prompt::Tokens(vec![5, 6])
        );
        assert_eq!(
            parse(&line(json!(["Once"])), Format::OpenAi).expect("one").prompt,
            Prompt::Text("Once".into())
        );
        let err = parse(&line(json!(["a", "b"])), Format::OpenAi).expect_err("two prompts");
        assert!(err.message.contains("one prompt per line"), "{}", err.message);
    }

    #[test]
    fn reads_an_anthropic_request_with_system_and_prefill() {
        let v = json!({"custom_id": "a1", "params": {"model": "m", "max_tokens": 20,
            "system": [{"type": "text", "text": "You are terse."}],
            "messages": [{"role": "user", "content": "Name a colour"}, {"role": "assistant", "content": "Blue"}],
            "stop_sequences": ["\n"], "temperature": 0, "top_k": 5}});
        let r = parse(&v, Format::Anthropic).expect("valid");
        assert_eq!(r.endpoint, Endpoint::Messages);
        let Prompt::Chat { messages, prefill } = &r.prompt else { panic!("a chat prompt") };
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[0], ChatMessage { role: "system".into(), content: "You are terse.".into() });
        assert_eq!(prefill.as_deref(), Some("Blue"));
        assert_eq!(
            (r.max_tokens, r.temperature, r.top_k, r.stop.clone()),
            (Some(20), Some(0.0), Some(5), vec!["\n".to_string()])
        );
    }

    #[test]
    fn defaults_fill_what_lines_leave_out() {
        let defaults: Map<String, Value> =
            serde_json::from_value(json!({"max_tokens": 7, "temperature": 0})).expect("map");
        let v = chat(json!({"messages": [{"role": "user", "content": "x"}], "temperature": 1}));
        let r = parse_line(v.to_string().as_bytes(), Format::OpenAi, &defaults).expect("valid");
        assert_eq!((r.max_tokens, r.temperature), (Some(7), Some(1.0)));
    }

    #[test]
    fn bad_parameters_name_what_is_wrong() {
        let user = json!([{"role": "user", "content": "x"}]);
        let cases: Vec<(Value, Format, ErrorCode, &str)> = vec![
            (
                chat(json!({"messages": user, "n": 2})),
                Format::OpenAi,
                ErrorCode::UnsupportedParameter,
                "`n` is 2",
            ),
            (
                chat(json!({"messages": user, "temperature": 3})),
                Format::OpenAi,
                ErrorCode::InvalidParameter,
                "temperature",
            ),
            (
                chat(json!({"messages": user, "stop": ["a", "b", "c", "d", "e"]})),
                Format::OpenAi,
                ErrorCode::InvalidParameter,
                "limit is 4",
            ),
            (
                chat(json!({"messages": user, "max_tokens": 0})),
                Format::OpenAi,
                ErrorCode::InvalidParameter,
                "max_tokens",
            ),
            (chat(json!({"messages": []})), Format::OpenAi, ErrorCode::MissingInput, "empty"),
            (
                chat(json!({"messages": [{"role": "wizard", "content": "x"}]})),
                Format::OpenAi,
                ErrorCode::InvalidParameter,
                "wizard",
            ),
            (
                chat(json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]})),
                Format::OpenAi,
                ErrorCode::UnsupportedParameter,
                "image_url",
            ),
            (
                chat(json!({"messages": user, "logprobs": true})),
                Format::OpenAi,
                ErrorCode::UnsupportedParameter,
                "logprobs",
            ),
            (
                json!({"custom_id": "x", "method": "POST", "url": "/v1/embeddings", "body": {}}),
                Format::OpenAi,
                ErrorCode::UnsupportedUrl,
                "/v1/embeddings",
            ),
            (
                json!({"custom_id": "x", "params": {"messages": user}}),
                Format::Anthropic,
                ErrorCode::InvalidParameter,
                "max_tokens` is required",
            ),
            (
                json!({"custom_id": "x", "params": {"messages": user}}),
                Format::OpenAi,
                ErrorCode::WrongFormat,
                "Anthropic format",
            ),
            (chat(json!({"messages": user})), Format::Anthropic, ErrorCode::WrongFormat, "OpenAI format"),
            (
                json!({"custom_id": "x", "params": {"max_tokens": 5, "messages": [{"role": "system", "content": "x"}]}}),
                Format::Anthropic,
                ErrorCode::InvalidParameter,
                "role",
            ),
        ];
        for (v, format, code, needle) in cases {
            let err = parse(&v, format).expect_err(&v.to_string());
            assert_eq!(err.code, code, "{v}: {}", err.message);
            assert!(err.message.contains(needle), "{v}: {:?} lacks {needle:?}", err.message);
            assert_eq!(err.custom_id.as_deref(), v["custom_id"].as_str());
        }
    }

    #[test]
    fn sniffing_tells_the_formats_apart() {
        assert_eq!(sniff(br#"{"custom_id":"a","params":{}}"#), Some(Format::Anthropic));
        assert_eq!(sniff(br#"{"custom_id":"a","url":"/v1/completions","body":{}}"#), Some(Format::OpenAi));
        assert_eq!(sniff(b"not json"), None);
        assert_eq!(sniff(br#"{"custom_id":"a"}"#), None);
    }
}
