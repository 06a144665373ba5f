//! Output lines in the OpenAI batch output format.

use base64::Engine;
use serde::Serialize;

use crate::input::openai::EncodingFormat;

/// A stable request id: the same custom_id gives the same id in every run and shard layout.
pub fn request_id(custom_id: &str) -> String {
    format!("batch_req_{:032x}", xxhash_rust::xxh3::xxh3_128(custom_id.as_bytes()))
}

#[derive(Serialize)]
struct ResultLine<'a> {
    id: &'a str,
    custom_id: &'a str,
    response: Response<'a>,
    error: Option<()>,
}

#[derive(Serialize)]
struct Response<'a> {
    status_code: u16,
    request_id: &'a str,
    body: EmbeddingsBody<'a>,
}

#[derive(Serialize)]
struct EmbeddingsBody<'a> {
    object: &'static str,
    data: Vec<EmbeddingData<'a>>,
    model: &'a str,
    usage: Usage,
}

#[derive(Serialize)]
struct EmbeddingData<'a> {
    object: &'static str,
    index: usize,
    embedding: Embedding<'a>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Embedding<'a> {
    Float(&'a [f32]),
    /// Little-endian f32 bytes, as the OpenAI API encodes them.
    Base64(String),
}

#[derive(Serialize)]
struct Usage {
    prompt_tokens: u64,
    total_tokens: u64,
}

/// Appends one result line (with its newline) for an embeddings request to `out`.
pub fn write_embeddings(
    out: &mut Vec<u8>,
    custom_id: &str,
    model: &str,
    vectors: &[&[f32]],
    encoding: EncodingFormat,
    prompt_tokens: u64,
) {
    let id = request_id(custom_id);
    let data = vectors
        .iter()
        .enumerate()
        .map(|(index, v)| EmbeddingData {
            object: "embedding",
            index,
            embedding: match encoding {
                EncodingFormat::Float => Embedding::Float(v),
                EncodingFormat::Base64 => {
                    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                    Embedding::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
                }
            },
        })
        .collect();
    let line = ResultLine {
        id: &id,
        custom_id,
        response: Response {
            status_code: 200,
            request_id: &id,
            body: EmbeddingsBody {
                object: "list",
                data,
                model,
                usage: Usage { prompt_tokens, total_tokens: prompt_tokens },
            },
        },
        error: None,
    };
    serde_json::to_writer(&mut *out, &line).expect("writing JSON into a Vec cannot fail");
    out.push(b'\n');
}

#[derive(Serialize)]
struct ErrorLine<'a> {
    id: String,
    custom_id: Option<&'a str>,
    response: Option<()>,
    error: ErrorBody<'a>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: &'a str,
    message: &'a str,
    /// 1-based line of the input file.
    line: u64,
}

/// Appends one error line (with its newline): OpenAI's batch error shape plus the input line.
pub fn write_error(out: &mut Vec<u8>, custom_id: Option<&str>, code: &str, message: &str, line: u64) {
    let id = match custom_id {
        Some(c) => request_id(c),
        None => format!("batch_req_line_{line}"),
    };
    let record = ErrorLine { id, custom_id, response: None, error: ErrorBody { code, message, line } };
    serde_json::to_writer(&mut *out, &record).expect("writing JSON into a Vec cannot fail");
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn result_lines_follow_the_openai_batch_output_shape() {
        let mut out = Vec::new();
        write_embeddings(
            &mut out,
            "req-1",
            "minilm",
            &[&[0.5, -1.0], &[0.25, 2.0]],
            EncodingFormat::Float,
            7,
        );
        assert_eq!(out.last(), Some(&b'\n'));
        let v: Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(v["custom_id"], "req-1");
        assert_eq!(v["error"], Value::Null);
        assert_eq!(v["response"]["status_code"], 200);
        assert_eq!(v["response"]["request_id"], v["id"]);
        let body = &v["response"]["body"];
        assert_eq!(body["object"], "list");
        assert_eq!(body["data"][1]["index"], 1);
        assert_eq!(body["data"][1]["embedding"], serde_json::json!([0.25, 2.0]));
        assert_eq!(body["usage"]["prompt_tokens"], 7);
        assert_eq!(body["usage"]["total_tokens"], 7);
    }

    #[test]
    fn base64_embeddings_are_little_endian_f32() {
        let mut out = Vec::new();
        write_embeddings(&mut out, "b", "m", &[&[1.0, -2.5]], EncodingFormat::Base64, 1);
        let v: Value = serde_json::from_slice(&out).expect("json");
        let text = v["response"]["body"]["data"][0]["embedding"].as_str().expect("a string");
        let bytes = base64::engine::general_purpose::STANDARD.decode(text).expect("base64");
        let floats: Vec<f32> =
            bytes.chunks(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))).collect();
        assert_eq!(floats, [1.0, -2.5]);
    }

    #[test]
    fn error_lines_name_code_message_and_line() {
        let mut out = Vec::new();
        write_error(&mut out, None, "invalid_json", "the line is not valid JSON", 12);
        let v: Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(v["custom_id"], Value::Null);
        assert_eq!(v["response"], Value::Null);
        assert_eq!(v["error"]["code"], "invalid_json");
        assert_eq!(v["error"]["line"], 12);
        assert_eq!(v["id"], "batch_req_line_12");
        assert_eq!(request_id("x"), request_id("x"));
        assert_ne!(request_id("x"), request_id("y"));
    }
}
