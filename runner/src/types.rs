//! The request and response types that input parsing, the tasks, the models and output records
//! all speak, so none of them reaches sideways into another for them.

use serde::{Deserialize, Serialize};

pub use barge_api::{Format, InputFormat};

/// One message of a chat request, as the chat template renders it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

/// Which response shape a generation result takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
    Messages,
}

/// Why a generation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finish {
    /// The model ended its turn.
    EndOfTurn,
    /// `max_tokens` (or the context) ran out.
    Length,
    /// One of the request's stop strings appeared.
    Stop(String),
}
