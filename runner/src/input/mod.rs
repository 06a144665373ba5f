//! Reading requests: lines streamed from storage ([`lines`]), the shard's byte range
//! ([`shard_range`]) and the OpenAI batch format ([`openai`]).

pub mod generation;
pub mod lines;
pub mod openai;

use std::fmt;

use barge_api::ShardId;

/// Why one input line became an error record instead of a result. The codes are stable: users
/// filter `errors.jsonl` by them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    InvalidJson,
    MissingCustomId,
    InvalidCustomId,
    DuplicateCustomId,
    UnsupportedMethod,
    UnsupportedUrl,
    MissingBody,
    MissingInput,
    InvalidInput,
    TooManyInputs,
    InvalidEncodingFormat,
    UnsupportedDimensions,
    LineTooLong,
    ModelError,
    InvalidParameter,
    UnsupportedParameter,
    NoChatTemplate,
    ContextLengthExceeded,
    WrongFormat,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::MissingCustomId => "missing_custom_id",
            ErrorCode::InvalidCustomId => "invalid_custom_id",
            ErrorCode::DuplicateCustomId => "duplicate_custom_id",
            ErrorCode::UnsupportedMethod => "unsupported_method",
            ErrorCode::UnsupportedUrl => "unsupported_url",
            ErrorCode::MissingBody => "missing_body",
            ErrorCode::MissingInput => "missing_input",
            ErrorCode::InvalidInput => "invalid_input",
            ErrorCode::TooManyInputs => "too_many_inputs",
            ErrorCode::InvalidEncodingFormat => "invalid_encoding_format",
            ErrorCode::UnsupportedDimensions => "unsupported_dimensions",
            ErrorCode::LineTooLong => "line_too_long",
            ErrorCode::ModelError => "model_error",
            ErrorCode::InvalidParameter => "invalid_parameter",
            ErrorCode::UnsupportedParameter => "unsupported_parameter",
            ErrorCode::NoChatTemplate => "no_chat_template",
            ErrorCode::ContextLengthExceeded => "context_length_exceeded",
            ErrorCode::WrongFormat => "wrong_format",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A line that cannot be served, with what is known of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    pub code: ErrorCode,
    pub message: String,
    pub custom_id: Option<String>,
}

impl LineError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        LineError { code, message: message.into(), custom_id: None }
    }

    pub fn with_custom_id(mut self, custom_id: Option<String>) -> Self {
        self.custom_id = custom_id;
        self
    }
}

/// The error of a line longer than `--max-line-bytes`.
pub fn line_too_long(len: u64, limit: usize) -> LineError {
    LineError::new(
        ErrorCode::LineTooLong,
        format!("the line is {len} bytes; the limit is {limit} (--max-line-bytes)"),
    )
}

/// The byte range `[start, end)` in which shard `shard` owns every line that *starts* there.
/// Ranges of all shards tile the file, so each line belongs to exactly one shard.
pub fn shard_range(size: u64, shard: ShardId) -> (u64, u64) {
    let at = |i: u32| ((size as u128 * i as u128) / shard.count as u128) as u64;
    (at(shard.index), at(shard.index + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_ranges_tile_the_file() {
        for count in 1..7u32 {
            let mut next = 0;
            for index in 0..count {
                let (start, end) = shard_range(1001, ShardId { index, count });
                assert_eq!(start, next);
                assert!(end >= start);
                next = end;
            }
            assert_eq!(next, 1001);
        }
    }
}
