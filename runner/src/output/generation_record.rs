//! Result lines for generation: OpenAI's `chat.completion` and `text_completion` bodies inside
//! the batch output envelope, and Anthropic's Message Batches result lines.

use serde::Serialize;
use serde_json::json;

use super::record::request_id;
use crate::input::LineError;
use crate::types::{Endpoint, Finish};

/// What one finished generation reports.
pub struct Generated<'a> {
    pub custom_id: &'a str,
    pub endpoint: Endpoint,
    pub model: &'a str,
    pub text: &'a str,
    pub finish: &'a Finish,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Unix seconds when the result was made.
    pub created: u64,
}

#[derive(Serialize)]
struct Envelope<'a, B: Serialize> {
    id: &'a str,
    custom_id: &'a str,
    response: Response<'a, B>,
    error: Option<()>,
}

#[derive(Serialize)]
struct Response<'a, B: Serialize> {
    status_code: u16,
    request_id: &'a str,
    body: B,
}

/// Appends the result line (with its newline) in the shape of the request's endpoint.
pub fn write(out: &mut Vec<u8>, g: &Generated) {
    let id = request_id(g.custom_id);
    // The response ids reuse the request id's hash: stable across reruns and shard layouts.
    let hash = id.trim_start_matches("batch_req_");
    let usage = json!({
        "prompt_tokens": g.prompt_tokens,
        "completion_tokens": g.completion_tokens,
        "total_tokens": g.prompt_tokens + g.completion_tokens,
    });
    let openai_finish = match g.finish {
        Finish::Length => "length",
        Finish::EndOfTurn | Finish::Stop(_) => "stop",
    };
    let value = match g.endpoint {
        Endpoint::ChatCompletions => envelope(
            &id,
            g.custom_id,
            json!({
                "id": format!("chatcmpl-{hash}"),
                "object": "chat.completion",
                "created": g.created,
                "model": g.model,
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": g.text, "refusal": null},
                    "logprobs": null,
                    "finish_reason": openai_finish,
                }],
                "usage": usage,
            }),
        ),
        Endpoint::Completions => envelope(
            &id,
            g.custom_id,
            json!({
                "id": format!("cmpl-{hash}"),
                "object": "text_completion",
                "created": g.created,
                "model": g.model,
                "choices": [{"text": g.text, "index": 0, "logprobs": null, "finish_reason": openai_finish}],
                "usage": usage,
            }),
        ),
        Endpoint::Messages => {
            let (stop_reason, stop_sequence) = match g.finish {
                Finish::EndOfTurn => ("end_turn", None),
                Finish::Length => ("max_tokens", None),
                Finish::Stop(s) => ("stop_sequence", Some(s.as_str())),
            };
            json!({
                "custom_id": g.custom_id,
                "result": {
                    "type": "succeeded",
                    "message": {
                        "id": format!("msg_{hash}"),
                        "type": "message",
                        "role": "assistant",
                        "model": g.model,
                        "content": [{"type": "text", "text": g.text}],
                        "stop_reason": stop_reason,
                        "stop_sequence": stop_sequence,
                        "usage": {"input_tokens": g.prompt_tokens, "output_tokens": g.completion_tokens},
                    },
                },
            })
        }
    };
    serde_json::to_writer(&mut *out, &value).expect("writing JSON into a Vec cannot fail");
    out.push(b'\n');
}

fn envelope(id: &str, custom_id: &str, body: serde_json::Value) -> serde_json::Value {
    serde_json::to_value(Envelope {
        id,
        custom_id,
        response: Response { status_code: 200, request_id: id, body },
        error: None,
    })
    .expect("plain data serialises")
}

/// Anthropic's `errored` result line for a request that could not be served.
pub fn write_anthropic_error(out: &mut Vec<u8>, custom_id: &str, error: &LineError) {
    let kind = match error.code {
        crate::input::ErrorCode::ModelError => "api_error",
        _ => "invalid_request_error",
    };
    let value = json!({
        "custom_id": custom_id,
        "result": {
            "type": "errored",
            "error": {"type": "error", "error": {"type": kind, "message": format!("{}: {}", error.code, error.message)}},
        },
    });
    serde_json::to_writer(&mut *out, &value).expect("writing JSON into a Vec cannot fail");
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::ErrorCode;
    use serde_json::Value;

    fn make(endpoint: Endpoint, finish: &Finish) -> Value {
        let mut out = Vec::new();
        let g = Generated {
            custom_id: "r1",
            endpoint,
            model: "smollm2",
            text: "Hello",
            finish,
            prompt_tokens: 10,
            completion_tokens: 2,
            created: 1_700_000_000,
        };
        write(&mut out, &g);
        assert_eq!(out.last(), Some(&b'\n'));
        serde_json::from_slice(&out).expect("json")
    }

    #[test]
    fn chat_and_completion_bodies_follow_openai() {
        let v = make(Endpoint::ChatCompletions, &Finish::Length);
        let body = &v["response"]["body"];
        assert_eq!(v["custom_id"], "r1");
        assert_eq!(body["object"], "chat.completion");
        assert_eq!(body["choices"][0]["message"]["content"], "Hello");
        assert_eq!(body["choices"][0]["finish_reason"], "length");
        assert_eq!(body["usage"]["total_tokens"], 12);
        assert!(body["id"].as_str().is_some_and(|s| s.starts_with("chatcmpl-")));
        let v = make(Endpoint::Completions, &Finish::Stop("\n".into()));
        let body = &v["response"]["body"];
        assert_eq!(body["object"], "text_completion");
        assert_eq!(body["choices"][0]["text"], "Hello");
        assert_eq!(body["choices"][0]["finish_reason"], "stop");
    }

    #[test]
    fn anthropic_results_carry_stop_reason_and_usage() {
        let v = make(Endpoint::Messages, &Finish::Stop("END".into()));
        let m = &v["result"]["message"];
        assert_eq!(v["result"]["type"], "succeeded");
        assert_eq!(m["type"], "message");
        assert_eq!(m["content"][0]["text"], "Hello");
        assert_eq!(
            (m["stop_reason"].as_str(), m["stop_sequence"].as_str()),
            (Some("stop_sequence"), Some("END"))
        );
        assert_eq!(
            (m["usage"]["input_tokens"].as_u64(), m["usage"]["output_tokens"].as_u64()),
            (Some(10), Some(2))
        );
        assert_eq!(
            make(Endpoint::Messages, &Finish::EndOfTurn)["result"]["message"]["stop_reason"],
            "end_turn"
        );
        assert_eq!(
            make(Endpoint::Messages, &Finish::Length)["result"]["message"]["stop_reason"],
            "max_tokens"
        );

        let mut out = Vec::new();
        write_anthropic_error(&mut out, "r2", &LineError::new(ErrorCode::InvalidParameter, "`top_p` is 2"));
        let v: Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(v["result"]["type"], "errored");
        assert_eq!(v["result"]["error"]["error"]["type"], "invalid_request_error");
        assert!(v["result"]["error"]["error"]["message"].as_str().is_some_and(|m| m.contains("top_p")));
    }
}
